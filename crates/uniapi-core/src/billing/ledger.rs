//! Balances and reservations, in memory, behind the `Balances` trait (a Redis implementation will serve
//! several nodes). Every settlement and credit becomes a ledger entry keyed by its request (or credit) id;
//! entries are written to SQL behind, in batches, and applied to the stored balances exactly once
//! (the entry id is the primary key). A user's balance and a key's cap never go below zero.

use std::sync::{Arc, Mutex, RwLock};

use foldhash::HashMap;

use serde::Serialize;

use crate::store::{Store, StoreError, now_ms};
use crate::writebehind::{self, Destination, Queue, Writer};

/// Why a reservation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The user's balance cannot cover the estimate.
    Balance,
    /// The key's spending cap cannot cover the estimate.
    KeyCap,
}

/// One line of the ledger: a signed change of a user's balance (negative for charges).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    pub id: String,
    pub user_id: i64,
    pub key_id: Option<i64>,
    /// `capture`, `release`, `refund` or `credit`.
    pub kind: &'static str,
    pub amount_nano: i64,
    /// Share of a charge due to cached input tokens (reported as `cache_used`).
    pub cache_nano: i64,
    pub note: Option<String>,
    pub created_at: i64,
}

/// What a user (or one key) has: for `/v1/billing/usage` and the admin API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Standing {
    pub balance_nano: i64,
    pub held_nano: i64,
    pub used_nano: i64,
    pub cache_used_nano: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeyStanding {
    pub quota_nano: Option<i64>,
    pub used_nano: i64,
    pub held_nano: i64,
    pub cache_used_nano: i64,
}

impl KeyStanding {
    fn room(&self) -> Option<i64> {
        self.quota_nano.map(|q| q - self.used_nano - self.held_nano)
    }
}

#[derive(Default)]
struct Account {
    standing: Standing,
    keys: HashMap<i64, KeyStanding>,
}

/// Starting values of an account, read from the store.
pub struct Opening {
    pub user_id: i64,
    pub standing: Standing,
    /// (key id, quota, used, cache used)
    pub keys: Vec<(i64, Option<i64>, i64, i64)>,
}

/// Reservations and settlements over `Balances`, each settlement and credit recorded as an entry.
pub struct Ledger {
    balances: Box<dyn Balances>,
    entries: Queue<LedgerEntry>,
}

/// Ledger entries go to SQL in batches; money is never dropped: a failing batch is retried until the
/// database takes it, and the queue has no cap.
struct Entries(Store);

impl Destination for Entries {
    type Record = LedgerEntry;
    const BATCH: usize = 1024;
    const CAPACITY: Option<usize> = None;
    const ATTEMPTS: Option<u32> = None;
    const WHAT: &'static str = "ledger entries";

    async fn write(&self, batch: &[LedgerEntry]) -> Result<(), StoreError> {
        self.0.apply_ledger_entries(batch).await
    }
}

pub type LedgerWriter = Writer<LedgerEntry>;

/// A hold on a user's balance (and the key's cap) for one request. It must be captured or released;
/// dropping it unsettled releases it, so no path can leak a hold.
#[must_use = "a reservation must be captured or released"]
pub struct Reservation {
    ledger: Arc<Ledger>,
    pub request_id: String,
    pub user_id: i64,
    pub key_id: i64,
    pub amount_nano: i64,
    settled: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("request_id", &self.request_id)
            .field("amount_nano", &self.amount_nano)
            .finish()
    }
}

impl Reservation {
    /// Charges `cost_nano` (of which `cache_nano` for cached input) and frees the rest of the hold.
    /// Returns what was charged: the cost, unless the balance or cap could not cover it.
    pub fn capture(mut self, cost_nano: i64, cache_nano: i64) -> i64 {
        self.settled = true;
        self.ledger.settle(
            &self.request_id,
            self.user_id,
            self.key_id,
            self.amount_nano,
            cost_nano.max(0),
            cache_nano.max(0),
        )
    }

    pub fn release(mut self) {
        self.settled = true;
        self.ledger.settle(
            &self.request_id,
            self.user_id,
            self.key_id,
            self.amount_nano,
            0,
            0,
        );
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.ledger.settle(
                &self.request_id,
                self.user_id,
                self.key_id,
                self.amount_nano,
                0,
                0,
            );
        }
    }
}

fn lock(account: &Mutex<Account>) -> std::sync::MutexGuard<'_, Account> {
    account.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where balances and holds live: in this process's memory (one node), or in a shared store such as
/// Redis (several nodes). Only the arithmetic is here; the ledger around it records every change.
/// Calls are synchronous because a capture must be possible from `Drop` (a client that leaves).
pub trait Balances: Send + Sync {
    /// Adds accounts and keys the store has, updates key caps, drops deleted ones; never replaces a
    /// balance the implementation already holds.
    fn sync(&self, openings: Vec<Opening>);
    /// Holds `amount` of the user's balance and the key's cap, atomically, or refuses.
    fn hold(&self, user_id: i64, key_id: i64, amount: i64) -> Result<(), Refusal>;
    /// Frees `held` and charges `cost` (of which `cache` for cached input), never below zero; returns
    /// what was charged.
    fn settle(&self, user_id: i64, key_id: i64, held: i64, cost: i64, cache: i64) -> i64;
    /// Adds (or removes) balance; refused when it would go below zero.
    fn credit(&self, user_id: i64, amount: i64) -> Result<Standing, Refusal>;
    /// Gives back `amount` the key had spent (a failed task).
    fn refund(&self, user_id: i64, key_id: i64, amount: i64);
    fn standing(&self, user_id: i64) -> Option<Standing>;
    fn key_standing(&self, user_id: i64, key_id: i64) -> Option<KeyStanding>;
}

/// Balances of one node: one lock per user, held for a few instructions.
#[derive(Default)]
pub struct MemoryBalances {
    accounts: RwLock<HashMap<i64, Arc<Mutex<Account>>>>,
}

impl MemoryBalances {
    fn account(&self, user_id: i64) -> Option<Arc<Mutex<Account>>> {
        self.accounts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&user_id)
            .cloned()
    }
}

impl Balances for MemoryBalances {
    fn sync(&self, openings: Vec<Opening>) {
        let mut accounts = self.accounts.write().unwrap_or_else(|e| e.into_inner());
        let present: std::collections::HashSet<i64> = openings.iter().map(|o| o.user_id).collect();
        accounts.retain(|id, _| present.contains(id));
        for opening in openings {
            let account = accounts.entry(opening.user_id).or_insert_with(|| {
                Arc::new(Mutex::new(Account {
                    standing: opening.standing,
                    keys: HashMap::default(),
                }))
            });
            let mut account = lock(account);
            let live: std::collections::HashSet<i64> = opening.keys.iter().map(|k| k.0).collect();
            account.keys.retain(|id, _| live.contains(id));
            for (key_id, quota, used, cache_used) in opening.keys {
                let key = account.keys.entry(key_id).or_insert(KeyStanding {
                    quota_nano: quota,
                    used_nano: used,
                    held_nano: 0,
                    cache_used_nano: cache_used,
                });
                key.quota_nano = quota;
            }
        }
    }

    fn hold(&self, user_id: i64, key_id: i64, amount: i64) -> Result<(), Refusal> {
        let account = self.account(user_id).ok_or(Refusal::Balance)?;
        let mut account = lock(&account);
        if account.standing.balance_nano - account.standing.held_nano < amount {
            return Err(Refusal::Balance);
        }
        let key = account.keys.entry(key_id).or_default();
        if key.room().is_some_and(|room| room < amount) {
            return Err(Refusal::KeyCap);
        }
        key.held_nano += amount;
        account.standing.held_nano += amount;
        Ok(())
    }

    fn settle(&self, user_id: i64, key_id: i64, held: i64, cost: i64, cache: i64) -> i64 {
        let Some(account) = self.account(user_id) else {
            return 0;
        };
        let mut account = lock(&account);
        account.standing.held_nano -= held;
        let key = account.keys.entry(key_id).or_default();
        key.held_nano -= held;
        // never below zero: charge at most what the balance and the cap still have
        let mut charged = cost;
        if let Some(room) = key.room() {
            charged = charged.min(room.max(0));
        }
        let available = account.standing.balance_nano - account.standing.held_nano;
        charged = charged.min(available.max(0));
        let cache_charged = cache.min(charged);
        let key = account.keys.entry(key_id).or_default();
        key.used_nano += charged;
        key.cache_used_nano += cache_charged;
        account.standing.balance_nano -= charged;
        account.standing.used_nano += charged;
        account.standing.cache_used_nano += cache_charged;
        charged
    }

    fn credit(&self, user_id: i64, amount: i64) -> Result<Standing, Refusal> {
        let account = self.account(user_id).ok_or(Refusal::Balance)?;
        let mut account = lock(&account);
        if account.standing.balance_nano - account.standing.held_nano + amount < 0 {
            return Err(Refusal::Balance);
        }
        account.standing.balance_nano += amount;
        Ok(account.standing)
    }

    fn refund(&self, user_id: i64, key_id: i64, amount: i64) {
        if let Some(account) = self.account(user_id) {
            let mut account = lock(&account);
            account.standing.balance_nano += amount;
            account.standing.used_nano -= amount;
            let key = account.keys.entry(key_id).or_default();
            key.used_nano -= amount;
        }
    }

    fn standing(&self, user_id: i64) -> Option<Standing> {
        self.account(user_id).map(|a| lock(&a).standing)
    }

    fn key_standing(&self, user_id: i64, key_id: i64) -> Option<KeyStanding> {
        self.account(user_id)
            .map(|a| lock(&a).keys.get(&key_id).copied().unwrap_or_default())
    }
}

impl Ledger {
    /// Starts the entry writer over in-memory balances opened from the store.
    pub fn start(store: Store, openings: Vec<Opening>) -> (Arc<Ledger>, LedgerWriter) {
        let (entries, writer) = writebehind::spawn(Entries(store));
        let ledger = Arc::new(Ledger {
            balances: Box::new(MemoryBalances::default()),
            entries,
        });
        ledger.sync(openings);
        (ledger, writer)
    }

    pub fn sync(&self, openings: Vec<Opening>) {
        self.balances.sync(openings);
    }

    /// Holds `amount_nano` of the user's balance and the key's cap, atomically, or refuses.
    pub fn reserve(
        self: &Arc<Self>,
        request_id: &str,
        user_id: i64,
        key_id: i64,
        amount_nano: i64,
    ) -> Result<Reservation, Refusal> {
        let amount = amount_nano.max(0);
        self.balances.hold(user_id, key_id, amount)?;
        Ok(Reservation {
            ledger: self.clone(),
            request_id: request_id.to_string(),
            user_id,
            key_id,
            amount_nano: amount,
            settled: false,
        })
    }

    fn settle(
        &self,
        request_id: &str,
        user_id: i64,
        key_id: i64,
        held: i64,
        cost: i64,
        cache: i64,
    ) -> i64 {
        let charged = self.balances.settle(user_id, key_id, held, cost, cache);
        let note = (charged < cost).then(|| {
            format!(
                "uncollected {} nano-USD: balance or cap exhausted",
                cost - charged
            )
        });
        if note.is_some() {
            tracing::warn!(
                request = request_id,
                user_id,
                cost,
                charged,
                "a capture exceeded what the balance could cover"
            );
        }
        self.record(LedgerEntry {
            id: request_id.to_string(),
            user_id,
            key_id: Some(key_id),
            kind: if cost == 0 { "release" } else { "capture" },
            amount_nano: -charged,
            cache_nano: cache.min(charged),
            note,
            created_at: now_ms(),
        });
        charged
    }

    /// Adds (or with a negative amount removes) balance; refused when it would go below zero.
    pub fn credit(
        &self,
        id: &str,
        user_id: i64,
        amount_nano: i64,
        note: Option<String>,
    ) -> Result<Standing, Refusal> {
        let standing = self.balances.credit(user_id, amount_nano)?;
        self.record(LedgerEntry {
            id: id.to_string(),
            user_id,
            key_id: None,
            kind: if amount_nano >= 0 { "credit" } else { "debit" },
            amount_nano,
            cache_nano: 0,
            note,
            created_at: now_ms(),
        });
        Ok(standing)
    }

    /// Gives a failed task's charge back, as the entry `refund:<task id>`: the entry id makes a second
    /// refund of the same task impossible in the store; the task's compare-and-swap makes it impossible here.
    pub fn refund(&self, task_id: &str, user_id: i64, key_id: i64, amount_nano: i64) {
        if amount_nano <= 0 {
            return;
        }
        self.balances.refund(user_id, key_id, amount_nano);
        self.record(LedgerEntry {
            id: format!("refund:{task_id}"),
            user_id,
            key_id: Some(key_id),
            kind: "refund",
            amount_nano,
            cache_nano: 0,
            note: Some("task failed".into()),
            created_at: now_ms(),
        });
    }

    pub fn standing(&self, user_id: i64) -> Option<Standing> {
        self.balances.standing(user_id)
    }

    pub fn key_standing(&self, user_id: i64, key_id: i64) -> Option<KeyStanding> {
        self.balances.key_standing(user_id, key_id)
    }

    fn record(&self, entry: LedgerEntry) {
        self.entries.push(entry);
    }

    /// Waits until every entry recorded before this call is in the database.
    pub async fn flush(&self) {
        self.entries.flush().await;
    }

    /// Waits while the database is far behind the entries (see [`crate::writebehind::HIGH_WATER`]).
    pub async fn room(&self) {
        self.entries.room().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger_with(balance: i64, quota: Option<i64>) -> Arc<Ledger> {
        let (entries, _) = writebehind::captured();
        let ledger = Arc::new(Ledger {
            balances: Box::new(MemoryBalances::default()),
            entries,
        });
        ledger.sync(vec![Opening {
            user_id: 1,
            standing: Standing {
                balance_nano: balance,
                ..Default::default()
            },
            keys: vec![(7, quota, 0, 0)],
        }]);
        ledger
    }

    #[test]
    fn reservations_never_overdraw_and_settle_to_the_cost() {
        let ledger = ledger_with(100, None);
        let a = ledger.reserve("a", 1, 7, 60).unwrap();
        assert_eq!(ledger.reserve("b", 1, 7, 60).unwrap_err(), Refusal::Balance);
        assert_eq!(a.capture(25, 5), 25);
        let s = ledger.standing(1).unwrap();
        assert_eq!(
            (s.balance_nano, s.held_nano, s.used_nano, s.cache_used_nano),
            (75, 0, 25, 5)
        );
        let b = ledger.reserve("b", 1, 7, 75).unwrap();
        drop(b); // an unsettled reservation is released
        assert_eq!(ledger.standing(1).unwrap().held_nano, 0);
    }

    #[test]
    fn the_key_cap_binds_before_the_balance() {
        let ledger = ledger_with(1_000, Some(50));
        assert_eq!(ledger.reserve("a", 1, 7, 60).unwrap_err(), Refusal::KeyCap);
        let r = ledger.reserve("a", 1, 7, 50).unwrap();
        // a capture above the hold is cut at the cap
        assert_eq!(r.capture(80, 0), 50);
        assert_eq!(ledger.key_standing(1, 7).unwrap().used_nano, 50);
        assert_eq!(ledger.reserve("b", 1, 7, 1).unwrap_err(), Refusal::KeyCap);
        // other keys of the user are not capped
        assert!(ledger.reserve("c", 1, 8, 900).is_ok());
    }

    #[test]
    fn credits_add_and_never_make_a_balance_negative() {
        let ledger = ledger_with(10, None);
        assert_eq!(ledger.credit("c1", 1, 5, None).unwrap().balance_nano, 15);
        let held = ledger.reserve("r", 1, 7, 10).unwrap();
        assert_eq!(
            ledger.credit("c2", 1, -6, None).unwrap_err(),
            Refusal::Balance
        );
        held.release();
        assert_eq!(ledger.credit("c3", 1, -15, None).unwrap().balance_nano, 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Reserve(i64),
        Capture(usize, i64),
        Release(usize),
        Credit(i64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0i64..5_000).prop_map(Op::Reserve),
            (0usize..8, 0i64..8_000).prop_map(|(i, c)| Op::Capture(i, c)),
            (0usize..8).prop_map(Op::Release),
            (-3_000i64..3_000).prop_map(Op::Credit),
        ]
    }

    proptest::proptest! {
        /// Whatever the sequence, the balance never goes below zero, the cap is never exceeded, and the
        /// balance moves by exactly the sum of the ledger entries written (no rounding, no drift).
        #[test]
        fn balances_equal_the_sum_of_their_entries(opening in 0i64..20_000, cap in proptest::option::of(0i64..15_000),
                                                    ops in proptest::collection::vec(op(), 1..60)) {
            let (entries, mut written) = writebehind::captured();
            let ledger = Arc::new(Ledger { balances: Box::new(MemoryBalances::default()), entries });
            ledger.sync(vec![Opening { user_id: 1, standing: Standing { balance_nano: opening, ..Default::default() }, keys: vec![(7, cap, 0, 0)] }]);
            let mut open: Vec<Reservation> = Vec::new();
            let mut captured = 0i64;
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Reserve(amount) => if let Ok(r) = ledger.reserve(&format!("r{n}"), 1, 7, amount) { open.push(r) },
                    Op::Capture(i, cost) if !open.is_empty() => { let r = open.remove(i % open.len()); captured += r.capture(cost, cost / 3); }
                    Op::Release(i) if !open.is_empty() => open.remove(i % open.len()).release(),
                    Op::Credit(amount) => { let _ = ledger.credit(&format!("c{n}"), 1, amount, None); }
                    _ => {}
                }
                let s = ledger.standing(1).unwrap();
                proptest::prop_assert!(s.balance_nano >= 0 && s.balance_nano - s.held_nano >= 0, "{s:?}");
                let k = ledger.key_standing(1, 7).unwrap();
                if let Some(cap) = cap { proptest::prop_assert!(k.used_nano + k.held_nano <= cap, "{k:?}"); }
            }
            drop(open);
            let s = ledger.standing(1).unwrap();
            proptest::prop_assert_eq!(s.held_nano, 0);
            proptest::prop_assert_eq!(s.used_nano, captured);
            let mut entries = 0i64;
            let mut ids = std::collections::HashSet::new();
            for e in written.drain() {
                proptest::prop_assert!(ids.insert(e.id.clone()), "entry {} twice", e.id);
                entries += e.amount_nano;
            }
            proptest::prop_assert_eq!(s.balance_nano, opening + entries);
        }
    }

    #[test]
    fn concurrent_reservations_hold_exactly_the_balance() {
        let ledger = ledger_with(1_000, None);
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    let mut won = Vec::new();
                    for i in 0..200 {
                        if let Ok(r) = ledger.reserve(&format!("{t}-{i}"), 1, 7, 7) {
                            won.push(r);
                        }
                    }
                    won
                })
            })
            .collect();
        let won: Vec<Reservation> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(won.len(), 1_000 / 7);
        let charged: i64 = won.into_iter().map(|r| r.capture(7, 0)).sum();
        assert_eq!(charged, 7 * (1_000 / 7));
        assert_eq!(ledger.standing(1).unwrap().balance_nano, 1_000 - charged);
    }
}
