"""The narrative engine: git for story, governed merges, replicated through the ledger.

See STORY.md. Modules: `model` (objects, hashes, ledger chunking), `text` (word diff, three-way
merge), `corpus` (the public Gibsey layout), `graph` (the SQLite view folded from the ledger),
`engine` (`Story`: branch, write, diff, merge, propose, the merge executor), `cli`, `part`,
`graphql`.
"""
