//! A compact byte-pair-encoding token counter for OpenAI's `o200k_base` and `cl100k_base` encodings.
//!
//! It counts exactly what tiktoken's `encode_ordinary(text).len()` counts (the tests check it against
//! `tiktoken-rs` on every vocabulary entry and on generated texts), with the same pre-split regexes and the
//! same merge rule. Only counting is needed here, so there is no decoder and no special tokens, and the
//! vocabulary stays where it is embedded: every token's bytes back to back in rank order, found by rank
//! through a table of end offsets and by bytes through an open-addressing table of ranks. That is about
//! 3.5 MB resident for `o200k_base` (the embedded 1.6 MB, 0.8 MB of offsets, 1 MB of table), where
//! `tiktoken-rs` builds three copies of every token (encoder, decoder, sorted list) and takes about 40 MB.
//!
//! The encodings are OpenAI's published `.tiktoken` files, packed by `assets/pack.py` (see
//! `assets/README.md`); nothing is downloaded.

use std::collections::BinaryHeap;
use std::hash::Hasher;
use std::sync::OnceLock;

use fancy_regex::Regex;

type Rank = u32;

const O200K_FILE: &[u8] = include_bytes!("../../assets/o200k_base.bpe");
const CL100K_FILE: &[u8] = include_bytes!("../../assets/cl100k_base.bpe");

/// The pre-split pattern of `o200k_base` (as in OpenAI's tiktoken).
const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"\p{N}{1,3}",
    "|",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    "|",
    r"\s*[\r\n]+",
    "|",
    r"\s+(?!\S)",
    "|",
    r"\s+"
);

/// The pre-split pattern of `cl100k_base`.
const CL100K_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

/// One encoding: its tokens and its pre-split regex.
pub struct Bpe {
    /// Every token's bytes, back to back in rank order (the embedded file itself).
    bytes: &'static [u8],
    /// Where the token of each rank ends in `bytes`; it starts where the one before ends.
    ends: Box<[u32]>,
    /// Open addressing (linear probing) by the Fx hash of the tokens' bytes, a power of two long and
    /// at most four fifths full (about 0.76 for both encodings): each slot holds a rank (the low [`RANK_BITS`]) under [`TAG_BITS`] more
    /// bits of the hash, so a probe past another token rarely reads its bytes; [`EMPTY`] where free.
    slots: Box<[u32]>,
    /// `64 - log2(slots.len())`: a slot is the top bits of the hash, its tag the bits below them.
    shift: u32,
    /// The pre-split; `None` only if the pattern failed to compile (see [`Bpe::load`]).
    regex: Option<Regex>,
}

const RANK_BITS: u32 = 18;
const TAG_BITS: u32 = 32 - RANK_BITS;
const RANK_MASK: u32 = (1 << RANK_BITS) - 1;
/// A free slot: its rank bits are above every rank (see [`unpack`]).
const EMPTY: u32 = u32::MAX;

impl std::fmt::Debug for Bpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bpe")
            .field("tokens", &self.ends.len())
            .finish()
    }
}

/// `o200k_base`, indexed on first use (one pass over its embedded tokens) and kept for the life of
/// the process.
pub fn o200k_base() -> &'static Bpe {
    static BPE: OnceLock<Bpe> = OnceLock::new();
    BPE.get_or_init(|| Bpe::load(O200K_FILE, O200K_PATTERN))
}

/// `cl100k_base`, built on first use and kept for the life of the process.
pub fn cl100k_base() -> &'static Bpe {
    static BPE: OnceLock<Bpe> = OnceLock::new();
    BPE.get_or_init(|| Bpe::load(CL100K_FILE, CL100K_PATTERN))
}

/// Splits a packed `.bpe` file (the token count as a little-endian u32, one length byte per token, then
/// the tokens' bytes) into the tokens' bytes and their end offsets; `None` if it is not consistent.
fn unpack(file: &'static [u8]) -> Option<(&'static [u8], Box<[u32]>)> {
    let count = u32::from_le_bytes(file.get(..4)?.try_into().ok()?) as usize;
    let lengths = file.get(4..4 + count)?;
    let bytes = file.get(4 + count..)?;
    let mut ends = Vec::with_capacity(count);
    let mut end = 0u32;
    for &length in lengths {
        end = end.checked_add(u32::from(length))?;
        ends.push(end);
    }
    (end as usize == bytes.len() && count < RANK_MASK as usize && lengths.iter().all(|&l| l > 0))
        .then(|| (bytes, ends.into_boxed_slice()))
}

impl Bpe {
    /// Indexes a packed vocabulary embedded in the binary. Both files and both patterns are checked by
    /// the tests; should one still be damaged, it is logged and counting falls back to one token per byte
    /// (an upper bound) for the vocabulary, or for the whole text when the pattern does not compile.
    fn load(file: &'static [u8], pattern: &str) -> Bpe {
        let (bytes, ends) = unpack(file).unwrap_or_else(|| {
            tracing::error!("an embedded token encoding is damaged; counting bytes");
            (&[], Box::default())
        });
        // at most 4/5 full: 2^18 slots (1 MB) for o200k_base's 199,998 tokens
        let bits = (ends.len() * 5 / 4 + 1)
            .next_power_of_two()
            .trailing_zeros()
            .max(4);
        let mut bpe = Bpe {
            bytes,
            ends,
            slots: vec![EMPTY; 1 << bits].into_boxed_slice(),
            shift: 64 - bits,
            regex: None,
        };
        let mask = bpe.slots.len() - 1;
        for rank in 0..bpe.ends.len() {
            let (mut slot, tag) = bpe.slot_of(bpe.token(rank));
            while bpe.slots[slot] != EMPTY {
                slot = (slot + 1) & mask;
            }
            bpe.slots[slot] = tag | rank as u32;
        }
        bpe.regex = Regex::new(pattern)
            .inspect_err(|e| tracing::error!(error = %e, "a tokenizer pattern does not compile; counting bytes"))
            .ok();
        bpe
    }

    /// The bytes of the token of `rank` (below `ends.len()`).
    fn token(&self, rank: usize) -> &'static [u8] {
        let start = match rank {
            0 => 0,
            _ => self.ends[rank - 1] as usize,
        };
        &self.bytes[start..self.ends[rank] as usize]
    }

    /// The first slot to probe for `bytes` and the tag its entry carries (in the bits above the rank).
    fn slot_of(&self, bytes: &[u8]) -> (usize, u32) {
        let mut hasher = FxHasher::default();
        hasher.write(bytes);
        let hash = hasher.finish();
        let tag = ((hash >> (self.shift - TAG_BITS)) as u32 & ((1 << TAG_BITS) - 1)) << RANK_BITS;
        ((hash >> self.shift) as usize, tag)
    }

    /// The number of tokens of `text` (what `encode_ordinary(text).len()` returns). Callers keep `text`
    /// short enough for the regex's backtracking (see `tokens::count_with`); should the regex still give up
    /// on a piece, the rest of the text counts one token per byte, an upper bound.
    pub fn count(&self, text: &str) -> usize {
        let Some(regex) = &self.regex else {
            return text.len();
        };
        let mut total = 0;
        let mut end = 0;
        for found in regex.find_iter(text) {
            let Ok(found) = found else {
                return total + (text.len() - end);
            };
            end = found.end();
            let piece = found.as_str().as_bytes();
            total += if self.rank(piece) != Rank::MAX {
                1
            } else {
                self.pieces(piece)
            };
        }
        total
    }

    /// The rank of the token `bytes`, or `Rank::MAX` if they are not one.
    fn rank(&self, bytes: &[u8]) -> Rank {
        let mask = self.slots.len() - 1;
        let (mut slot, tag) = self.slot_of(bytes);
        loop {
            let entry = self.slots[slot];
            if entry == EMPTY {
                return Rank::MAX;
            }
            let rank = entry & RANK_MASK;
            if entry & !RANK_MASK == tag && self.token(rank as usize) == bytes {
                return rank;
            }
            slot = (slot + 1) & mask;
        }
    }

    /// How many tokens byte-pair merging leaves of `piece` (at least 1 byte long).
    fn pieces(&self, piece: &[u8]) -> usize {
        if piece.len() < 2 {
            return piece.len();
        }
        if piece.len() < 100 {
            self.merge_small(piece)
        } else {
            self.merge_large(piece)
        }
    }

    /// Repeatedly merges the adjacent pair of lowest rank (tiktoken's `_byte_pair_merge`): O(n·m), fast
    /// for the short pieces that are the common case.
    fn merge_small(&self, piece: &[u8]) -> usize {
        // (start, rank of the pair starting here)
        let mut parts: Vec<(usize, Rank)> = Vec::with_capacity(piece.len() + 1);
        let mut min: (Rank, usize) = (Rank::MAX, usize::MAX);
        for i in 0..piece.len() - 1 {
            let rank = self.rank(&piece[i..i + 2]);
            if rank < min.0 {
                min = (rank, i);
            }
            parts.push((i, rank));
        }
        parts.push((piece.len() - 1, Rank::MAX));
        parts.push((piece.len(), Rank::MAX));
        let rank_at = |parts: &Vec<(usize, Rank)>, i: usize| {
            if i + 3 < parts.len() {
                self.rank(&piece[parts[i].0..parts[i + 3].0])
            } else {
                Rank::MAX
            }
        };
        while min.0 != Rank::MAX {
            let i = min.1;
            if i > 0 {
                parts[i - 1].1 = rank_at(&parts, i - 1);
            }
            parts[i].1 = rank_at(&parts, i);
            parts.remove(i + 1);
            min = (Rank::MAX, usize::MAX);
            for (i, &(_, rank)) in parts[..parts.len() - 1].iter().enumerate() {
                if rank < min.0 {
                    min = (rank, i);
                }
            }
        }
        parts.len() - 1
    }

    /// The same merges with a heap (tiktoken's `_byte_pair_merge_large`): O(m log n) for long pieces.
    fn merge_large(&self, piece: &[u8]) -> usize {
        struct State {
            prev: usize,
            end: usize,
            next_end: usize,
            next_rank: Rank,
        }
        #[derive(PartialEq, Eq)]
        struct Merge {
            start: usize,
            rank: Rank,
        }
        impl Ord for Merge {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                other
                    .rank
                    .cmp(&self.rank)
                    .then_with(|| other.start.cmp(&self.start))
            }
        }
        impl PartialOrd for Merge {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        let mut state = Vec::with_capacity(piece.len());
        state.push(State {
            prev: usize::MAX,
            end: 1,
            next_end: 2,
            next_rank: Rank::MAX,
        });
        let mut heap = BinaryHeap::with_capacity(piece.len());
        for i in 0..piece.len() - 1 {
            let rank = self.rank(&piece[i..i + 2]);
            if rank != Rank::MAX {
                heap.push(Merge { start: i, rank });
                state[i].next_rank = rank;
            }
            state.push(State {
                prev: i,
                end: i + 2,
                next_end: i + 3,
                next_rank: Rank::MAX,
            });
        }
        let potential = |state: &mut Vec<State>,
                         heap: &mut BinaryHeap<Merge>,
                         start: usize,
                         next_end: usize| {
            state[start].next_end = next_end;
            state[start].next_rank = Rank::MAX;
            if next_end <= piece.len() {
                let rank = self.rank(&piece[start..next_end]);
                if rank != Rank::MAX {
                    heap.push(Merge { start, rank });
                    state[start].next_rank = rank;
                }
            }
        };
        while let Some(left) = heap.pop() {
            if left.rank == Rank::MAX {
                break;
            }
            if left.rank != state[left.start].next_rank {
                continue;
            }
            let left_start = left.start;
            let right_start = state[left_start].end;
            let right_end = state[left_start].next_end;
            let right_next_end = state[right_start].next_end;
            state[left_start].end = right_end;
            potential(&mut state, &mut heap, left_start, right_next_end);
            if right_end < state.len() {
                state[right_end].prev = left_start;
            }
            if left_start > 0 {
                let prev_start = state[left_start].prev;
                potential(&mut state, &mut heap, prev_start, right_end);
            }
            state[right_start].next_rank = Rank::MAX;
        }
        let mut count = 0;
        let mut i = 0;
        while i < state.len() {
            count += 1;
            i = state[i].end;
        }
        count
    }
}

/// The Fx hash (rustc's): a multiply-rotate over 8 bytes at a time, fast for short keys like tokens.
/// Not resistant to chosen collisions, which is fine for a fixed vocabulary.
#[derive(Default)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tiktoken(name: &str) -> &'static tiktoken_rs::CoreBPE {
        match name {
            "o200k" => tiktoken_rs::o200k_base_singleton(),
            _ => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    fn ours(name: &str) -> &'static Bpe {
        match name {
            "o200k" => o200k_base(),
            _ => cl100k_base(),
        }
    }

    #[test]
    fn every_vocabulary_entry_equals_tiktoken_and_is_found_by_its_bytes() {
        for (name, tokens) in [("o200k", 199_998), ("cl100k", 100_256)] {
            let bpe = ours(name);
            assert_eq!(bpe.ends.len(), tokens, "{name}");
            assert!(bpe.regex.is_some(), "{name}");
            for rank in 0..tokens {
                let expected = tiktoken(name).decode_bytes(&[rank as Rank]).unwrap();
                assert_eq!(bpe.token(rank), expected.as_slice(), "{name}: rank {rank}");
                assert_eq!(bpe.rank(&expected), rank as Rank, "{name}: rank {rank}");
            }
            assert_eq!(bpe.rank(b"\xff\xfe not a token \x00"), Rank::MAX);
        }
    }

    #[test]
    fn a_damaged_vocabulary_counts_one_token_per_byte() {
        assert!(unpack(b"\x02\0\0\0\x01\x01a").is_none()); // two tokens named, one there
        assert!(unpack(b"\x01\0\0\0\x00").is_none()); // an empty token
        assert!(unpack(b"\x01\0").is_none());
        let bpe = Bpe::load(b"\x02\0\0\0\x01", O200K_PATTERN);
        assert_eq!(bpe.count("hello world"), "hello world".len());
        assert_eq!(bpe.count(""), 0);
    }

    #[test]
    fn counts_equal_tiktoken_on_known_texts() {
        let long_word = "supercalifragilistic".repeat(40);
        let texts = [
            "",
            "Hello there, how are you today?",
            "  leading spaces and trailing   ",
            "line\r\nbreaks\n\n\tand tabs",
            "数字 1234567 and émigré naïve café — ünïcödé ✓ 🚀🚀",
            "I'm you're they've we'll she'd IT'S",
            "fn main() { println!(\"{}\", x /* c */); } // http://a.b/c?d=e",
            "ÆØÅ Ελληνικά русский 日本語のテキスト 한국어",
            long_word.as_str(),
        ];
        for name in ["o200k", "cl100k"] {
            for text in texts {
                assert_eq!(
                    ours(name).count(text),
                    tiktoken(name).encode_ordinary(text).len(),
                    "{name}: {text:?}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn counts_equal_tiktoken(
            text in "(\\PC|[ \\t\\r\\n]|[a-z]{1,12}|[0-9]{1,6}|'s|'LL|[!-/:-@]{1,4}){0,60}",
            long in proptest::option::of("[a-zA-Z]{100,400}"),
        ) {
            let text = match long {
                Some(long) => format!("{text}{long}"),
                None => text,
            };
            for name in ["o200k", "cl100k"] {
                prop_assert_eq!(ours(name).count(&text), tiktoken(name).encode_ordinary(&text).len());
            }
        }
    }
}
