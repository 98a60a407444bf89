"""The gift ledger: signed, hash-chained feeds (one per node) and the views built from them.

Modules, one job each:

- `canonical` - the canonical JSON encoding that gets signed (see CANONICAL.md)
- `entry`     - one signed entry: build, sign, parse, verify
- `bodies`    - the known entry types and the exact shape of each body
- `errors`    - typed errors; `Rejected` carries a machine-readable reason
- `forkproof` - the shareable proof that an author signed two entries at one seq
- `store`     - SQLite storage of the feeds, import checks, fork proofs
- `economy`   - balances: mint, gift (diminishing returns), burn (see ECONOMY.md)
- `governance`- proposals, votes, quorum, executors (see GOVERNANCE.md)
- `view`      - the deterministic fold of all feeds into economy + governance state
- `ledger`    - the node's ledger: its own key, guarded appends, the live view
- `cli`       - `gibsey ledger ...`
- `testing`   - FeedWriter/forge: play another node in tests and benchmarks
"""
