//! Fencing tokens: refuse commands older than what this collector has seen.
//!
//! Every Assign/Unassign carries `(generation, epoch, leader_term)`. A command
//! from an older leader term, or for an older assignment epoch of a monitor
//! (or an older generation within the same epoch), is stale: a deposed or
//! delayed manager sent it after a newer one acted, and obeying it would undo
//! the newer decision. Pure bookkeeping, no I/O.
//!
//! Terms and epochs are etcd revisions, which only grow in one history. So
//! an etcd whose current revision is below a term or an Assign epoch already seen was
//! restored from an older backup: the tokens seen belong to a history that
//! no longer exists, and refusing everything newer than them would refuse
//! every command forever. The collector then starts the book over from
//! what etcd says now ([`FencingBook::history_went_back`],
//! [`FencingBook::rebase`]). Restoring with `etcdutl snapshot restore
//! --bump-revision … --mark-compacted` avoids the situation altogether.
//!
//! The book keeps only tokens of the current leader term: when a newer term
//! is believed, the tokens older terms left are dropped, so it holds the
//! monitors commanded since the last leader change (under one long-lived
//! leader it still grows with every monitor that leader commands, deleted
//! ones included, until the next change). Safe because a command of an
//! older term is refused by its term alone (checked under the same lock as
//! the tokens, and a term is believed only once etcd names its leader), and
//! every command of the newer term carries an epoch and generation at least
//! as high as the dropped ones: an epoch is an assignment record's revision,
//! the older leader wrote records only while its leader key existed
//! (leader-guarded transactions), the newer leader's campaign returned only
//! after that key was gone, and its passes read the records (linearizably)
//! after that. (A term is never compared with an epoch: a waiting
//! candidate's key, and so its term, can be older than records the sitting
//! leader writes.)

use std::collections::HashMap;

use kollector_core::{Epoch, Generation, MonitorId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Tokens {
    pub generation: Generation,
    pub epoch: Epoch,
    pub leader_term: i64,
}

#[derive(Debug, Default)]
pub struct FencingBook {
    max_term: i64,
    seen: HashMap<MonitorId, Tokens>,
    /// Bumped by every change, so a judgement made from an etcd read can
    /// tell whether a token was recorded while the read was in flight.
    version: u64,
    /// The highest epoch an accepted Assign carried: an assignment
    /// record's revision, so a revision etcd had. (An Unassign's epoch may
    /// echo what this collector reported running, which after a restore
    /// belongs to the old history: it must not make a restore look new.)
    highest_assigned: i64,
}

impl FencingBook {
    /// Why `tokens` for `id` are stale, if they are.
    pub fn check(&self, id: &MonitorId, tokens: Tokens) -> Result<(), String> {
        if tokens.leader_term < self.max_term {
            return Err(format!(
                "leader term {} is older than term {} already seen",
                tokens.leader_term, self.max_term
            ));
        }
        if let Some(seen) = self.seen.get(id) {
            if tokens.epoch < seen.epoch {
                return Err(format!("epoch {} of {id} is older than epoch {} already seen", tokens.epoch, seen.epoch));
            }
            if tokens.epoch == seen.epoch && tokens.generation < seen.generation {
                return Err(format!(
                    "generation {} of {id} is older than generation {} already seen",
                    tokens.generation, seen.generation
                ));
            }
        }
        Ok(())
    }

    /// Why an Unassign is stale, if it is: only the term and the epoch
    /// matter (stopping is idempotent; a deleted monitor has no generation
    /// to send).
    pub fn check_unassign(&self, id: &MonitorId, tokens: Tokens) -> Result<(), String> {
        self.check(id, Tokens { generation: Generation::MAX, ..tokens })
    }

    /// The highest leader term believed so far.
    pub fn max_term(&self) -> i64 {
        self.max_term
    }

    /// Notes a leader term seen on a read (ListRunning): older terms are
    /// refused from now on.
    pub fn observe_term(&mut self, term: i64) {
        if term > self.max_term {
            self.believe(term);
        }
    }

    /// Believes `term` (newer than any so far) and drops the tokens older
    /// terms left (see the module's header for why that is safe).
    fn believe(&mut self, term: i64) {
        self.max_term = term;
        self.seen.retain(|_, t| t.leader_term >= term);
        self.version += 1;
    }

    /// Monitors whose tokens are kept.
    pub fn tokens_kept(&self) -> usize {
        self.seen.len()
    }

    /// Changes so far (see the field).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The highest etcd revision a believed term or an accepted Assign
    /// carried.
    pub fn highest_revision(&self) -> i64 {
        self.max_term.max(self.highest_assigned)
    }

    /// Whether etcd's history went back, from one linearizable read made
    /// while this book did not change: its `revision` is below a revision a
    /// token already carried, or its current leader's term is below a term
    /// already believed (a new leader's key is always created later).
    pub fn history_went_back(&self, revision: i64, current_term: i64) -> bool {
        (revision > 0 && revision < self.highest_revision()) || (current_term > 0 && current_term < self.max_term)
    }

    /// Starts over after etcd's history went back: forgets every token of
    /// the old history and believes `current_term` (the current leader's,
    /// read from etcd) from now on; the caller lets only that term through.
    pub fn rebase(&mut self, current_term: i64) {
        self.seen.clear();
        self.max_term = current_term;
        self.highest_assigned = 0;
        self.version += 1;
    }

    /// Records an accepted Assign's tokens (its epoch is an assignment
    /// record's revision).
    pub fn record_assign(&mut self, id: &MonitorId, tokens: Tokens) {
        self.record(id, tokens);
        self.highest_assigned = self.highest_assigned.max(i64::try_from(tokens.epoch).unwrap_or(i64::MAX));
    }

    /// Records accepted tokens.
    pub fn record(&mut self, id: &MonitorId, tokens: Tokens) {
        self.version += 1;
        if tokens.leader_term > self.max_term {
            self.believe(tokens.leader_term);
        }
        // Never lower what was seen: an Unassign (any generation) must not
        // let an older generation of the same epoch back in.
        let seen = self.seen.entry(id.clone()).or_insert(tokens);
        if (tokens.epoch, tokens.generation) > (seen.epoch, seen.generation) {
            let generation =
                if tokens.epoch == seen.epoch { tokens.generation.max(seen.generation) } else { tokens.generation };
            *seen = Tokens { generation, ..tokens };
        }
        seen.leader_term = seen.leader_term.max(tokens.leader_term);
    }

    /// The epoch under which `id` was last assigned here.
    pub fn epoch(&self, id: &MonitorId) -> Epoch {
        self.seen.get(id).map(|t| t.epoch).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(generation: u64, epoch: u64, leader_term: i64) -> Tokens {
        Tokens { generation, epoch, leader_term }
    }

    #[test]
    fn a_history_that_went_back_is_noticed_and_rebased_on() {
        let id = MonitorId::new("m").unwrap();
        let mut book = FencingBook::default();
        book.record_assign(&id, t(1, 900, 500));
        assert_eq!(book.highest_revision(), 900);
        assert!(!book.history_went_back(950, 500), "etcd moved on: nothing to do");
        assert!(!book.history_went_back(900, 500));
        assert!(!book.history_went_back(0, 0), "an unknown revision proves nothing");
        assert!(book.history_went_back(600, 500), "restored to revision 600");
        assert!(book.history_went_back(2000, 450), "the current leader's term is below one believed");
        let v = book.version();
        // The restored history's leader (term 550) and epochs (610) pass once rebased.
        assert!(book.check(&id, t(1, 610, 550)).is_err());
        book.rebase(550);
        assert!(book.version() > v, "a rebase is a change");
        assert!(book.check(&id, t(1, 610, 550)).is_ok());
        assert!(book.check(&id, t(1, 610, 549)).is_err(), "older terms of the new history are still refused");
        // After the rebase, an Unassign echoing an old-history epoch the
        // collector still reported does not make the restore look new again.
        book.record(&MonitorId::new("old").unwrap(), t(Generation::MAX, 900, 550));
        assert!(!book.history_went_back(620, 550), "no second rebase from an echoed epoch");
    }

    #[test]
    fn newer_tokens_pass_and_older_ones_are_refused() {
        let id = MonitorId::new("m").unwrap();
        let other = MonitorId::new("o").unwrap();
        let mut book = FencingBook::default();
        assert!(book.check(&id, t(1, 10, 5)).is_ok());
        book.record(&id, t(1, 10, 5));
        assert!(book.check(&id, t(1, 10, 5)).is_ok(), "a retry of the same command is fine");
        assert!(book.check(&id, t(2, 10, 5)).is_ok(), "a new generation in the same epoch");
        assert!(book.check(&id, t(1, 12, 5)).is_ok(), "a newer epoch");
        assert!(book.check(&id, t(1, 9, 5)).unwrap_err().contains("epoch 9"));
        assert!(book.check(&id, t(1, 10, 4)).unwrap_err().contains("leader term 4"));
        book.record(&id, t(3, 10, 5));
        assert!(book.check(&id, t(2, 10, 5)).unwrap_err().contains("generation 2"));
        // The term is global: an old leader is refused for every monitor.
        assert!(book.check(&other, t(1, 50, 4)).is_err());
        assert_eq!(book.epoch(&id), 10);
        assert!(book.check_unassign(&id, t(0, 10, 5)).is_ok(), "an Unassign needs no generation");
        book.record(&id, t(0, 10, 5));
        assert!(book.check(&id, t(2, 10, 5)).is_err(), "recording an Unassign does not lower the generation");
        assert!(book.check_unassign(&id, t(0, 9, 5)).is_err());
        book.observe_term(7);
        assert!(book.check(&id, t(1, 12, 6)).is_err(), "a term seen on a read fences older leaders");
        assert_eq!(book.epoch(&other), 0);
    }

    #[test]
    fn a_new_term_drops_the_tokens_older_terms_left_and_still_refuses_them() {
        let mut book = FencingBook::default();
        for i in 0..100 {
            let id = MonitorId::new(format!("m{i}")).unwrap();
            book.record_assign(&id, t(1, 100 + i, 50));
        }
        assert_eq!(book.tokens_kept(), 100);
        let kept = MonitorId::new("m7").unwrap();
        // The new leader (term 300) commands one monitor: only its tokens stay.
        book.record_assign(&kept, t(1, 310, 300));
        assert_eq!(book.tokens_kept(), 1);
        // A delayed command of the old term is refused by its term, for a
        // monitor whose tokens were dropped too.
        let dropped = MonitorId::new("m3").unwrap();
        assert!(book.check(&dropped, t(1, 103, 50)).unwrap_err().contains("leader term 50"));
        // The current term's tokens still fence an older epoch of that term.
        assert!(book.check(&kept, t(1, 305, 300)).is_err());
        assert!(book.check(&kept, t(1, 310, 300)).is_ok());
        // A term seen on a read drops them as well.
        book.observe_term(400);
        assert_eq!(book.tokens_kept(), 0);
        assert!(book.check(&kept, t(1, 310, 300)).is_err(), "older term");
    }
}
