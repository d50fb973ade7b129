// Package flow is the flowswitch's flow table (docs/design.md §4): the entries the
// nexus registers for apps before any data moves, and the lookup that steers
// each received or transmitted packet to its entry.
//
// A [Table] is not safe for concurrent use: one nexus worker owns it, and
// the [Entry] values it hands out (counters, SYN bucket) belong to the same
// worker.
//
// Invariants, each checked by the tests and by FuzzTable:
//
//   - Lookup never returns a torn-down entry, not even from its one-entry
//     cache, and never allocates. LookupBatch answers as Lookup for every
//     key of a batch (FuzzTable, TestLookupBatchLarge).
//   - The index (index.go, open addressing keyed by packet.Key.Hash, linear
//     probing, backward-shift deletion) finds every active entry from its
//     home slot without crossing an empty slot (FuzzIndex).
//   - Version changes with every Register and Teardown that changed the
//     table, so a cache of lookups knows when it is stale.
//   - Lookup tries the 5-tuple, then Key.Listener3, then Key.Listener2; the
//     entry it returns has exactly the key of the mask that matched.
//   - A key's shape fixes its kind: a connected key has a remote address, a
//     Listener3 key only a local address, a Listener2 key neither. So at most
//     one entry matches each mask, and the kinds never collide in the index.
//   - Each (protocol, local port) belongs to at most one PortID at a time;
//     listeners of one PortID on it never overlap (same family and equal
//     addresses, or one of them on "any").
//   - Flow tokens are unique in the table; advisory indices are unique per
//     PortID and below Options.AdvisorySlots, or NoAdvisory. A new entry
//     takes its port's lowest free slot, so a port's slots in use are
//     packed at the bottom of its table: the advisory table grows with the
//     port's concurrent flows up to AdvisorySlots, and the flows past it
//     are registered without a slot, not refused. Teardown gives both back.
//   - Limits are counts of entries, each a memory budget (see
//     DefaultMaxFlows): Register refuses a port's entry past
//     Options.MaxPortFlows and the table's past Options.MaxFlows with
//     ErrTooManyFlows, counted in Limits, with the table unchanged.
package flow
