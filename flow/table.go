package flow

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"

	"github.com/skylane/skylane/packet"
)

// Defaults of Options. The limits are memory budgets, not table sizes: an
// entry costs about 300 bytes in the nexus (the 192-byte Entry, its index
// slot, its token map entry and its share of the port's slices), so
// DefaultMaxFlows is about 600 MiB at worst and DefaultMaxPortFlows about
// 75 MiB per app.
const (
	// DefaultAdvisorySlots is the most advisory slots one port hands out,
	// Skywalk's maximum. The channel's table is created this large but is
	// memory (a memfd) that the kernel commits page by page as slots are
	// first written: slots are handed out from the bottom, the lowest
	// free one first, so the table grows with the port's concurrent flows
	// (512 flows a page). A flow registered while all slots are taken
	// gets NoAdvisory rather than a refusal.
	DefaultAdvisorySlots = 1 << 16
	// DefaultMaxFlows is the most active entries of a table (all ports).
	DefaultMaxFlows = 1 << 21
	// DefaultMaxPortFlows is the most active entries of one port: above
	// 100,000 concurrent connections per app with room to spare.
	DefaultMaxPortFlows = 1 << 18
)

// NoAdvisory is the advisory index of a flow registered when its port had
// no free slot: the flow has no entry in the channel's advisory table
// (channel.App.Admissible reads an index outside the table as admissible),
// and the transmit queue regulates it by dropping early, as the traffic of
// an app that does not read advisories (docs/design.md §7).
const NoAdvisory = ^uint32(0)

// Registration errors. Register wraps them with the key, so test with
// errors.Is.
var (
	// ErrBadKey: the key does not fit its Kind (a listener key with a
	// remote part, a connected key without one), or its version, protocol,
	// addresses or ports are malformed.
	ErrBadKey = errors.New("flow: bad key")
	// ErrAddressNotLocal: the local address is not one of
	// Options.LocalAddrs (the zero "any" address is local only for a
	// Listener2).
	ErrAddressNotLocal = errors.New("flow: local address not local")
	// ErrMulticast: the local address is multicast or the IPv4 limited
	// broadcast address.
	ErrMulticast = errors.New("flow: multicast or broadcast local address")
	// ErrPortInUse: the flow exists already, the protocol's local port
	// belongs to another port or a kernel socket (Options.PortTaken), or a
	// listener overlaps one of the same port.
	ErrPortInUse = errors.New("flow: local port in use")
	// ErrKernelPort: the local port belongs to a kernel socket
	// (Options.PortTaken). It wraps ErrPortInUse, so errors.Is matches
	// either.
	ErrKernelPort = fmt.Errorf("held by a kernel socket: %w", ErrPortInUse)
	// ErrTooManyFlows: the owner port has Options.MaxPortFlows flows, or
	// the table Options.MaxFlows, already. Apps see it through package
	// control (control.ErrTooManyFlows is this error).
	ErrTooManyFlows = errors.New("flow: too many flows")
)

// Options configures a Table.
type Options struct {
	// LocalAddrs are the interface's addresses; a registered flow's local
	// address must be one of them. IPv4-mapped IPv6 addresses count as
	// IPv4. New refuses an invalid, unspecified or multicast address.
	LocalAddrs []netip.Addr
	// AdvisorySlots is the size of each port's advisory table: the most
	// flows of a port that have an advisory slot at a time (the others get
	// NoAdvisory). Zero or less means DefaultAdvisorySlots.
	AdvisorySlots int
	// MaxFlows bounds the active entries of the table, MaxPortFlows those
	// of one port; past them Register fails with ErrTooManyFlows (counted,
	// Limits). Zero or less means DefaultMaxFlows and DefaultMaxPortFlows.
	MaxFlows, MaxPortFlows int
	// PortTaken, if set, reports whether a kernel socket holds a local port
	// (when a kernel stack shares the device). Register calls it when a
	// flow would claim a (protocol, port) no port of the table holds yet.
	PortTaken func(proto uint8, port uint16) bool
}

// Request asks for a flow. Listener keys have zero remote parts; a
// Listener2 key also has a zero local address (packet.Key.Listener2).
type Request struct {
	Port PortID
	Key  packet.Key
	Kind Kind
}

// Table is the flow table. See the package doc for its invariants; it is
// not safe for concurrent use.
type Table struct {
	opts  Options
	local map[netip.Addr]struct{} // immutable after New, unmapped addresses

	idx     index             // all active entries by key; kinds cannot collide (package doc)
	tokens  map[uint32]*Entry // all active entries by token; ForEach walks it
	ports   map[PortID]*portState
	owners  map[protoPort]owner
	l3count map[packet.Key]int // active Listener3 entries per Listener2 key

	nextToken uint32
	nL3, nL2  int    // active listener entries of each kind: Lookup skips a mask with none
	version   uint64 // counts the Registers and Teardowns that changed the table

	limits    Limits
	portSlots map[PortID]uint32 // SetPortSlots: a port's own advisory slot limit

	hashes  []uint64 // LookupBatch scratch
	touched uintptr  // LookupBatch's sink for the loads it issues early

	// One-entry lookup cache: lastEntry matched lastKey. Register and
	// Teardown clear it, and a hit also checks the entry is active.
	lastKey   packet.Key
	lastEntry *Entry
}

// Limits counts what the table's limits did. Counters only grow.
type Limits struct {
	PortFull   uint64 `json:"port_full"`   // registrations refused: the port had MaxPortFlows flows
	TableFull  uint64 `json:"table_full"`  // registrations refused: the table had MaxFlows flows
	NoAdvisory uint64 `json:"no_advisory"` // flows registered without an advisory slot (NoAdvisory)
}

// portState is one PortID's share of the table.
type portState struct {
	entries []*Entry // active entries; Entry.portIdx indexes this
	free    slotHeap // released advisory slots below next, lowest first
	next    uint32   // slots [next, AdvisorySlots) were never handed out
}

type protoPort struct {
	proto uint8
	port  uint16
}

// owner is who holds a (protocol, local port) and with how many entries.
type owner struct {
	port PortID
	n    int
}

// New returns an empty table.
func New(opts Options) (*Table, error) {
	if opts.AdvisorySlots <= 0 {
		opts.AdvisorySlots = DefaultAdvisorySlots
	}
	if opts.MaxFlows <= 0 {
		opts.MaxFlows = DefaultMaxFlows
	}
	if opts.MaxPortFlows <= 0 {
		opts.MaxPortFlows = DefaultMaxPortFlows
	}
	t := &Table{
		opts:    opts,
		local:   make(map[netip.Addr]struct{}, len(opts.LocalAddrs)),
		tokens:  make(map[uint32]*Entry),
		ports:   make(map[PortID]*portState),
		owners:  make(map[protoPort]owner),
		l3count: make(map[packet.Key]int),

		portSlots: make(map[PortID]uint32),
	}
	t.idx.init()
	for _, a := range opts.LocalAddrs {
		a = a.Unmap()
		if !a.IsValid() || a.IsUnspecified() || isMulticast(a) {
			return nil, fmt.Errorf("flow table: local address %v is invalid, unspecified or multicast", a)
		}
		t.local[a.WithZone("")] = struct{}{}
	}
	return t, nil
}

// Register adds a flow for req.Port. The errors wrap ErrBadKey,
// ErrMulticast, ErrAddressNotLocal, ErrPortInUse or ErrTooManyFlows,
// checked in that order; on error the table is unchanged. The entry gets
// the port's lowest free advisory slot, or NoAdvisory when it has none.
func (t *Table) Register(req Request) (*Entry, error) {
	k := req.Key
	if err := checkKey(k, req.Kind); err != nil {
		return nil, fmt.Errorf("register %s %v: %w", req.Kind, k, err)
	}
	if req.Kind != Listener2 {
		a := k.LocalAddrPort().Addr()
		if isMulticast(a) {
			return nil, fmt.Errorf("register %v: %w", k, ErrMulticast)
		}
		if _, ok := t.local[a]; !ok {
			return nil, fmt.Errorf("register %v: %w", k, ErrAddressNotLocal)
		}
	}
	if err := t.checkPort(req); err != nil {
		return nil, fmt.Errorf("register %v: %w", k, err)
	}
	ps := t.ports[req.Port]
	if ps == nil {
		ps = &portState{}
	}
	switch {
	case len(ps.entries) >= t.opts.MaxPortFlows:
		t.limits.PortFull++
		return nil, fmt.Errorf("register %v: port %d has %d flows, its limit: %w",
			k, req.Port, len(ps.entries), ErrTooManyFlows)
	case t.idx.n >= t.opts.MaxFlows:
		t.limits.TableFull++
		return nil, fmt.Errorf("register %v: the flow table has %d flows, its limit: %w",
			k, t.idx.n, ErrTooManyFlows)
	}

	// Checks done: commit.
	e := &Entry{key: k, port: req.Port, kind: req.Kind, state: Active, hash: k.Hash()}
	rand.Read(e.id[:]) // never fails (crypto/rand, Go ≥ 1.24)
	switch {
	case len(ps.free) > 0:
		e.adv = ps.free.pop()
	case ps.next < t.slots(req.Port):
		e.adv = ps.next
		ps.next++
	default:
		e.adv = NoAdvisory
		t.limits.NoAdvisory++
	}
	e.token = t.allocToken()
	e.portIdx = len(ps.entries)
	ps.entries = append(ps.entries, e)
	t.ports[req.Port] = ps
	t.idx.insert(e, e.hash)
	t.tokens[e.token] = e
	pp := protoPort{k.Proto, k.LocalPort}
	t.owners[pp] = owner{req.Port, t.owners[pp].n + 1}
	switch req.Kind {
	case Listener3:
		t.l3count[k.Listener2()]++
		t.nL3++
	case Listener2:
		t.nL2++
	}
	// The cache may hold a less specific entry that the new one now beats.
	t.lastEntry = nil
	t.version++
	return e, nil
}

// checkPort applies the port rules of Register.
func (t *Table) checkPort(req Request) error {
	k := req.Key
	if e := t.find(k); e != nil {
		return fmt.Errorf("flow exists for port %d: %w", e.port, ErrPortInUse)
	}
	pp := protoPort{k.Proto, k.LocalPort}
	if o, ok := t.owners[pp]; ok {
		if o.port != req.Port {
			return fmt.Errorf("held by port %d: %w", o.port, ErrPortInUse)
		}
	} else if t.opts.PortTaken != nil && t.opts.PortTaken(k.Proto, k.LocalPort) {
		return ErrKernelPort
	}
	switch req.Kind {
	case Listener3:
		if t.find(k.Listener2()) != nil {
			return fmt.Errorf("overlaps listener on any address: %w", ErrPortInUse)
		}
	case Listener2:
		if t.l3count[k] > 0 {
			return fmt.Errorf("overlaps listener on a local address: %w", ErrPortInUse)
		}
	}
	return nil
}

// allocToken returns a token no active entry has, never 0.
func (t *Table) allocToken() uint32 {
	for {
		t.nextToken++
		if t.nextToken == 0 {
			continue
		}
		if _, ok := t.tokens[t.nextToken]; !ok {
			return t.nextToken
		}
	}
}

// SetPortSlots limits port p's advisory slots to n, below
// Options.AdvisorySlots: the size of its channel's advisory table, so an
// index the table does not have is never handed out (the flows past it get
// NoAdvisory). n < 0 removes the limit. Slots p holds already are kept.
func (t *Table) SetPortSlots(p PortID, n int) {
	if n < 0 {
		delete(t.portSlots, p)
		return
	}
	t.portSlots[p] = uint32(min(n, t.opts.AdvisorySlots))
}

// slots returns how many advisory slots port p may have.
func (t *Table) slots(p PortID) uint32 {
	if n, ok := t.portSlots[p]; ok {
		return n
	}
	return uint32(t.opts.AdvisorySlots)
}

// IsLocal reports whether a is one of the table's local addresses.
func (t *Table) IsLocal(a netip.Addr) bool {
	_, ok := t.local[a.Unmap().WithZone("")]
	return ok
}

// PortOwner returns the port holding (proto, local port), if any: it lets
// the transmit path name why a packet matched no flow.
func (t *Table) PortOwner(proto uint8, port uint16) (PortID, bool) {
	o, ok := t.owners[protoPort{proto, port}]
	return o.port, ok
}

// find returns the active entry with exactly key k, or nil.
func (t *Table) find(k packet.Key) *Entry { return t.idx.get(&k, k.Hash()) }

// Lookup returns the active entry for a packet's key: the Connected entry
// with key *k, else the Listener3 entry with key k.Listener3(), else the
// Listener2 entry with key k.Listener2(), else nil. A repeat of the previous
// key is answered from a one-entry cache; a mask no active entry has is not
// looked up. Lookup reads *k and does not keep it; it does not allocate.
//
// k is a pointer because the key is 40 bytes: a copy per call is written
// with overlapping vector stores, and reading it back word by word right
// after stalls store forwarding, which cost as much as the hash.
func (t *Table) Lookup(k *packet.Key) *Entry {
	if e := t.lastEntry; e != nil && e.state == Active && k.Equal(&t.lastKey) {
		return e
	}
	e := t.idx.get(k, k.Hash())
	if e == nil && t.nL3 > 0 {
		l := k.Listener3()
		e = t.idx.get(&l, l.Hash())
	}
	if e == nil && t.nL2 > 0 {
		l := k.Listener2()
		e = t.idx.get(&l, l.Hash())
	}
	if e == nil {
		return nil
	}
	t.lastKey, t.lastEntry = *k, e
	return e
}

// LookupBatch sets out[i] to Lookup(&keys[i]) for every i < len(keys)
// (out must be at least as long). It is faster than a Lookup per key on
// tables larger than the CPU caches: it hashes every key and loads each
// key's index slot, then each slot's entry, before it compares any key, so
// the cache misses of a batch overlap instead of following one another.
// Every key is hashed: a caller whose batches hold runs of one key (one
// busy flow) passes each run once. It does not allocate once its scratch
// has grown to the batch size.
func (t *Table) LookupBatch(keys []packet.Key, out []*Entry) {
	out = out[:len(keys)]
	if cap(t.hashes) < len(keys) {
		t.hashes = make([]uint64, len(keys))
	}
	hs := t.hashes[:len(keys)]
	x := &t.idx
	// Pass 1: hash.
	for i := range keys {
		hs[i] = keys[i].Hash()
	}
	// Pass 2: load the home slots, then find each key's slot by hash and
	// load its entry (key first, then the counters). The loads of one loop
	// do not depend on each other and the loops are tight, so the CPU keeps
	// a whole batch of misses in flight; touched keeps the compiler from
	// dropping them. Finding the slot by hash, not just taking the home
	// slot, matters: a quarter of the keys sit past their home slot at the
	// table's usual load, and a wrong guess costs a miss in pass 3.
	var touched uintptr
	for _, h := range hs {
		touched += uintptr(x.slots[h&x.mask].hash)
	}
	for i, h := range hs {
		e := x.probe(h)
		if e != nil {
			touched += uintptr(e.key.LocalPort) + uintptr(e.counters.PacketsIn)
		}
		out[i] = e
	}
	t.touched = touched
	// Pass 3: check the candidates' keys, now mostly from the cache; a
	// miss (or, rarely, a candidate with an equal hash but another key)
	// takes the full path: the rest of the probe run, then the listeners.
	for i := range keys {
		k := &keys[i]
		if e := out[i]; e != nil && e.key.Equal(k) {
			continue
		}
		e := x.get(k, hs[i])
		if e == nil && t.nL3 > 0 {
			l := k.Listener3()
			e = x.get(&l, l.Hash())
		}
		if e == nil && t.nL2 > 0 {
			l := k.Listener2()
			e = x.get(&l, l.Hash())
		}
		out[i] = e
	}
}

// Version returns a number that changes whenever Register adds an entry or
// Teardown removes one. A cache of lookup results (the transmit path's
// last-flow cache) is valid while the version it was filled at is current:
// a new entry may beat a cached listener, and a torn-down one must not be
// found.
func (t *Table) Version() uint64 { return t.version }

// ByToken returns the active entry with flow token tok, or nil.
func (t *Table) ByToken(tok uint32) *Entry { return t.tokens[tok] }

// Len returns the number of active entries.
func (t *Table) Len() int { return t.idx.n }

// PortLen returns the number of p's active entries.
func (t *Table) PortLen(p PortID) int {
	if ps := t.ports[p]; ps != nil {
		return len(ps.entries)
	}
	return 0
}

// Limits returns what the table's limits did so far.
func (t *Table) Limits() Limits { return t.limits }

// ForEach calls fn for each active entry, in no particular order, until fn
// returns false. fn may tear entries down; an entry torn down before fn
// reaches it is skipped, and one registered during ForEach may or may not
// be visited.
func (t *Table) ForEach(fn func(*Entry) bool) {
	// The token map, not the index: a map iteration tolerates deletions,
	// whereas a teardown shifts index slots under an iterator.
	for _, e := range t.tokens {
		if !fn(e) {
			return
		}
	}
}

// Teardown removes e from the table and marks it TornDown; its token,
// advisory slot and share of its local port become free. Tearing down an
// entry twice, or one of another table, does nothing.
func (t *Table) Teardown(e *Entry) {
	if e == nil || e.state != Active || t.tokens[e.token] != e {
		return
	}
	e.state = TornDown
	t.version++
	if t.lastEntry == e {
		t.lastEntry = nil
	}
	t.idx.remove(e, e.hash)
	delete(t.tokens, e.token)
	switch e.kind {
	case Listener3:
		l2 := e.key.Listener2()
		if t.l3count[l2]--; t.l3count[l2] == 0 {
			delete(t.l3count, l2)
		}
		t.nL3--
	case Listener2:
		t.nL2--
	}
	pp := protoPort{e.key.Proto, e.key.LocalPort}
	if o := t.owners[pp]; o.n > 1 {
		t.owners[pp] = owner{o.port, o.n - 1}
	} else {
		delete(t.owners, pp)
	}

	ps := t.ports[e.port]
	last := len(ps.entries) - 1
	ps.entries[e.portIdx] = ps.entries[last]
	ps.entries[e.portIdx].portIdx = e.portIdx
	ps.entries[last] = nil
	ps.entries = ps.entries[:last]
	switch {
	case last == 0:
		delete(t.ports, e.port) // all slots free again
	case e.adv != NoAdvisory:
		ps.free.push(e.adv)
	}
}

// TeardownPort tears down all of p's entries, as when its channel closes,
// and returns them, in no particular order.
func (t *Table) TeardownPort(p PortID) []*Entry {
	ps := t.ports[p]
	if ps == nil {
		return nil
	}
	out := append([]*Entry(nil), ps.entries...)
	for _, e := range out {
		t.Teardown(e)
	}
	return out
}

// v4Prefix is the prefix of an IPv4-mapped address in a packet.Key.
var v4Prefix = [12]byte{10: 0xff, 11: 0xff}

// checkKey reports whether k is well formed and has the shape of kind.
func checkKey(k packet.Key, kind Kind) error {
	var zero [16]byte
	switch k.Version {
	case 4:
		if k.Proto == packet.ProtoICMPv6 {
			return ErrBadKey
		}
		for _, a := range [2]*[16]byte{&k.Local, &k.Remote} {
			if *a != zero && [12]byte(a[:12]) != v4Prefix {
				return ErrBadKey
			}
		}
	case 6:
		if k.Proto == packet.ProtoICMP {
			return ErrBadKey
		}
		for _, a := range [2]*[16]byte{&k.Local, &k.Remote} {
			if [12]byte(a[:12]) == v4Prefix {
				return ErrBadKey // v4-mapped: MakeKey would have made it version 4
			}
		}
	default:
		return ErrBadKey
	}
	switch k.Proto {
	case 0: // IPv6 hop-by-hop: never a transport
		return ErrBadKey
	case packet.ProtoTCP, packet.ProtoUDP:
		if k.LocalPort == 0 || (kind == Connected && k.RemotePort == 0) {
			return ErrBadKey
		}
	case packet.ProtoICMP, packet.ProtoICMPv6:
		// The local port is the echo identifier, 0 included; the remote
		// port is always 0 (packet.Key).
		if k.RemotePort != 0 {
			return ErrBadKey
		}
	default:
		if k.LocalPort != 0 || k.RemotePort != 0 {
			return ErrBadKey // no ports in this protocol
		}
	}
	switch kind {
	case Connected:
		if k.Remote == zero {
			return ErrBadKey
		}
		// A zero local address is caught as not local.
	case Listener3:
		if k != k.Listener3() {
			return ErrBadKey
		}
	case Listener2:
		if k != k.Listener2() {
			return ErrBadKey
		}
	default:
		return ErrBadKey
	}
	return nil
}

// isMulticast reports whether a is multicast or the IPv4 limited broadcast
// address. Subnet broadcast addresses are not caught: the table knows the
// interface's addresses, not its prefixes.
func isMulticast(a netip.Addr) bool {
	return a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255})
}
