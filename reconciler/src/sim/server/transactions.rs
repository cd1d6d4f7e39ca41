//! Reads and writes in and out of transactions, and commits: a
//! transaction works on its own copy of the store, remembers every node it
//! accessed, and at commit fails with `EAGAIN` if a change made since it
//! began touched one of them (xenstored_transaction.c), else its
//! operations are replayed on the live store.

use std::sync::Arc;

use super::super::change::{Change, Op, Touched};
use super::super::store::{Errno, Store};
use super::{Client, Shared, State};

pub(super) struct Transaction {
    pub(super) connection: u64,
    /// The store as the transaction sees it: as it began, with its own
    /// operations applied.
    pub(super) store: Store,
    pub(super) start_generation: u64,
    /// Its operations, replayed on the live store at commit.
    pub(super) ops: Vec<Op>,
    /// Every node it read, listed or wrote (parents whose children it
    /// changed included).
    pub(super) accessed: Vec<Touched>,
}

impl Shared {
    pub(super) fn read_op<T>(
        &self,
        connection: u64,
        tx: u32,
        path: &str,
        read: impl FnOnce(&Store) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let mut state = self.lock();
        if tx == 0 {
            return read(&state.store);
        }
        let transaction = state
            .transactions
            .get_mut(&tx)
            .filter(|t| t.connection == connection)
            .ok_or(Errno::Enoent)?;
        // A node read as missing counts too: its creation meanwhile
        // changes what the transaction saw.
        transaction.accessed.push(Touched::node(path));
        read(&transaction.store)
    }

    pub(super) fn write_op(
        self: &Arc<Shared>,
        client: Client,
        tx: u32,
        op: Op,
    ) -> Result<(), Errno> {
        let mut state = self.lock();
        if tx != 0 {
            let transaction = state
                .transactions
                .get_mut(&tx)
                .filter(|t| t.connection == client.connection)
                .ok_or(Errno::Enoent)?;
            let ops = op.as_done_by(&transaction.store, client.domid)?;
            for op in ops {
                let touched = op.touches(&transaction.store);
                op.apply(&mut transaction.store)?;
                transaction.accessed.extend(touched);
                transaction.ops.push(op);
            }
            return Ok(());
        }
        for op in op.as_done_by(&state.store, client.domid)? {
            let touched = op.touches(&state.store);
            op.apply(&mut state.store)?;
            record(&mut state, touched);
            self.committed(&mut state, &[op.change()]);
        }
        Ok(())
    }

    pub(super) fn end_transaction(
        self: &Arc<Shared>,
        connection: u64,
        tx: u32,
        commit: bool,
    ) -> Result<(), Errno> {
        let mut state = self.lock();
        if state
            .transactions
            .get(&tx)
            .is_none_or(|t| t.connection != connection)
        {
            return Err(Errno::Enoent);
        }
        let transaction = state.transactions.remove(&tx).expect("checked above");
        let result = self.commit(&mut state, transaction, commit);
        trim_log(&mut state);
        result
    }

    fn commit(
        self: &Arc<Shared>,
        state: &mut State,
        transaction: Transaction,
        commit: bool,
    ) -> Result<(), Errno> {
        if !commit {
            return Ok(());
        }
        state.commits += 1;
        let injected = self.faults.eagain_commits.contains(&state.commits);
        let conflict = if self.faults.strict_transactions {
            transaction.start_generation != state.generation
        } else {
            state
                .log
                .iter()
                .filter(|(generation, _)| *generation > transaction.start_generation)
                .flat_map(|(_, touched)| touched)
                .any(|changed| transaction.accessed.iter().any(|a| a.meets(changed)))
        };
        if injected || conflict {
            return Err(Errno::Eagain);
        }
        if transaction.ops.is_empty() {
            return Ok(());
        }
        // Its operations again, on the store as it is now: what others
        // committed meanwhile touched nothing it used, and stays.
        let mut written = Vec::new();
        let mut store = state.store.clone();
        for op in &transaction.ops {
            written.extend(op.touches(&store));
            // It succeeded on the transaction's copy, whose nodes it used
            // are unchanged here; an error would mean they were not.
            if op.apply(&mut store).is_err() {
                return Err(Errno::Eagain);
            }
        }
        state.store = store;
        record(state, written);
        let changes: Vec<Change> = transaction.ops.iter().map(Op::change).collect();
        self.committed(state, &changes);
        Ok(())
    }
}

/// A change made: a new generation, and what it touched for the
/// transactions open now.
pub(super) fn record(state: &mut State, touched: Vec<Touched>) {
    state.generation += 1;
    if !state.transactions.is_empty() {
        let generation = state.generation;
        state.log.push_back((generation, touched));
    }
}

/// Forgets the changes no open transaction began before.
pub(super) fn trim_log(state: &mut State) {
    let oldest = state
        .transactions
        .values()
        .map(|t| t.start_generation)
        .min();
    match oldest {
        None => state.log.clear(),
        Some(oldest) => {
            while state.log.front().is_some_and(|(g, _)| *g <= oldest) {
                state.log.pop_front();
            }
        }
    }
}
