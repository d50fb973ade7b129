// Package steer keeps the flows that user space owns in a BPF hash map, and
// provides the programs that steer a device's frames by it (docs/design.md §8–§9):
// an XDP program that redirects the frames of registered flows to an
// AF_XDP socket and passes every other frame to the kernel (XDP_PASS), and
// a TC ingress program that drops registered flows' frames before the
// kernel stack sees them, for drivers that read the device with AF_PACKET
// (whose taps see a frame before TC ingress does).
//
// Invariants:
//
//   - Fail open: a frame is taken from the kernel only if it parses as
//     Ethernet (one VLAN tag at most) / IPv4 or IPv6 / TCP or UDP and its
//     key is in the map (5-tuple, then listener3, then listener2, the flow
//     table's order); or it is a later fragment of a datagram whose first
//     fragment was taken; or an ICMP/ICMPv6 error quoting a packet of a
//     flow in the map (prog.go). ARP, NDP, echo and other ICMP, IPv6
//     extension headers other than one fragment header, and every
//     unclaimed port and datagram always reach the kernel.
//   - Link-based attachment only (BPF_LINK_CREATE for XDP, TCX for TC): the
//     kernel detaches a program when the last fd of its link closes, so a
//     process that dies, even by SIGKILL, leaves nothing attached.
//   - Every Close releases what its constructor made, on every path; a
//     constructor that fails has released everything before it returns.
//   - Attach calls act in the network namespace of the calling OS thread:
//     run them inside the namespace of the device (nettest's NS.Do).
//
// The nexus keeps the map in step with its flow table through the
// [netif.FlowSteerer] interface, which links that steer implement.
package steer

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/packet"
)

// Errors.
var (
	// ErrFull is netif.ErrSteerFull: the flow map holds MaxFlows entries.
	ErrFull = netif.ErrSteerFull
	// ErrClosed: the Flows was closed. It wraps netif.ErrClosed, which the
	// nexus tests for.
	ErrClosed = fmt.Errorf("steer: flow map closed: %w", netif.ErrClosed)
)

// DefaultMaxFlows is the default capacity of the flow map. The map is not
// preallocated (BPF_F_NO_PREALLOC): its buckets cost 16 bytes per unit of
// capacity up front (4 MiB here), and each key in it about 128 bytes of
// kernel memory (a hash element holding the 40-byte key and its value),
// allocated when added and freed when removed. The nexus puts only
// listeners and outgoing connections in it: a connection a steered
// listener accepted is covered by the listener's key (the programs look
// the listener shapes up after the 5-tuple), so this bounds a device's
// outgoing flows, not its accepted ones. Options.MaxFlows raises it (up to
// 1<<24) for a host that dials more.
const DefaultMaxFlows = 1 << 18

// flowMapFlags: the map takes memory per key, not per unit of capacity.
const flowMapFlags = unix.BPF_F_NO_PREALLOC

// Options configure a Flows map.
type Options struct {
	// MaxFlows is the map's capacity. Default DefaultMaxFlows.
	MaxFlows int
}

// Flows is the BPF map of registered flows. Its methods may be called from
// any goroutine.
type Flows struct {
	mu  sync.RWMutex // guards m against Close: a closed fd number may be reused
	m   *ebpf.Map    // nil once closed
	max int          // immutable
}

// NewFlows creates an empty flow map. It needs CAP_BPF (root).
func NewFlows(opts Options) (*Flows, error) {
	if opts.MaxFlows == 0 {
		opts.MaxFlows = DefaultMaxFlows
	}
	if opts.MaxFlows < 1 || opts.MaxFlows > 1<<24 {
		return nil, fmt.Errorf("steer: MaxFlows %d outside 1..%d", opts.MaxFlows, 1<<24)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "skylane_flows",
		Type:       ebpf.Hash,
		KeySize:    KeyLen,
		ValueSize:  valueLen,
		MaxEntries: uint32(opts.MaxFlows),
		Flags:      flowMapFlags,
	})
	if err != nil {
		return nil, fmt.Errorf("steer: create flow map: %w%s", err, privHint(err))
	}
	return &Flows{m: m, max: opts.MaxFlows}, nil
}

// Add registers a flow: from now on the programs steer its frames away
// from the kernel. Adding a key twice is harmless.
func (f *Flows) Add(k packet.Key) error {
	mk, err := MakeKey(k)
	if err != nil {
		return err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.m == nil {
		return ErrClosed
	}
	if err := f.m.Put(mk, mk.kind()); err != nil {
		if errors.Is(err, errE2BIG) {
			return fmt.Errorf("steer: add %v: %w (MaxFlows %d)", k, ErrFull, f.max)
		}
		return fmt.Errorf("steer: add %v: %w", k, err)
	}
	return nil
}

// Remove unregisters a flow: the kernel gets its frames again. Removing a
// key that is not there is not an error, so teardown paths may repeat it.
func (f *Flows) Remove(k packet.Key) error {
	mk, err := MakeKey(k)
	if err != nil {
		return err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.m == nil {
		return ErrClosed
	}
	if err := f.m.Delete(mk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("steer: remove %v: %w", k, err)
	}
	return nil
}

// Contains reports whether k is registered, exactly (no listener masks).
func (f *Flows) Contains(k packet.Key) (bool, error) {
	mk, err := MakeKey(k)
	if err != nil {
		return false, err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.m == nil {
		return false, ErrClosed
	}
	var v uint32
	err = f.m.Lookup(mk, &v)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return false, nil
	}
	return false, fmt.Errorf("steer: look up %v: %w", k, err)
}

// Close releases the map. Programs loaded over it keep their own reference,
// so close them too (or first). Close is idempotent.
func (f *Flows) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		return nil
	}
	err := f.m.Close()
	f.m = nil
	return err
}

// withMap runs fn with the open map, or returns ErrClosed.
func (f *Flows) withMap(fn func(m *ebpf.Map) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.m == nil {
		return ErrClosed
	}
	return fn(f.m)
}

// Counters count the outcomes of a program, summed over CPUs, since it
// was loaded.
type Counters struct {
	Hit         uint64 // XDP: redirected to the socket; TC: dropped
	HitNoSocket uint64 // XDP only: matched a flow but no socket on the queue, passed
	Miss        uint64 // parsed but matched no flow: passed
	Unparsed    uint64 // not a TCP/UDP frame the programs parse: passed
}

// newCounters makes a program's per-CPU counters array.
// newFragMap creates a program's fragment map (prog.go): fragment keys of
// the datagrams whose first fragment hit a flow, least recently used
// forgotten first.
func newFragMap(name string) (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       name,
		Type:       ebpf.LRUHash,
		KeySize:    KeyLen,
		ValueSize:  4,
		MaxEntries: fragMapSize,
	})
	if err != nil {
		return nil, fmt.Errorf("steer: create fragment map: %w%s", err, privHint(err))
	}
	return m, nil
}

func newCounters(name string) (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       name,
		Type:       ebpf.PerCPUArray,
		KeySize:    4,
		ValueSize:  8,
		MaxEntries: numCounters,
	})
	if err != nil {
		return nil, fmt.Errorf("steer: create counters map: %w%s", err, privHint(err))
	}
	return m, nil
}

func readCounters(m *ebpf.Map) (Counters, error) {
	var c Counters
	dst := [numCounters]*uint64{ctrHit: &c.Hit, ctrHitNoSocket: &c.HitNoSocket, ctrMiss: &c.Miss, ctrUnparsed: &c.Unparsed}
	for i, p := range dst {
		var per []uint64
		if err := m.Lookup(uint32(i), &per); err != nil {
			return Counters{}, fmt.Errorf("steer: read counters: %w", err)
		}
		for _, v := range per {
			*p += v
		}
	}
	return c, nil
}
