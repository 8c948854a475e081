-- The version of a task whose state change still owes its callback (0: none): set with the change,
-- cleared when its delivery ends. A gateway resumes the deliveries still owed when it starts.
ALTER TABLE tasks ADD COLUMN callback_due INTEGER NOT NULL DEFAULT 0;
CREATE INDEX tasks_callback_due ON tasks (callback_due) WHERE callback_due > 0
