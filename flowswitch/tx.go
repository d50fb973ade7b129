package flowswitch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/packet"
)

// Transmit path (DESIGN §6, anti-spoofing after US20190303221A1).
//
// An app sends IP packets (no L2 header, the same framing the receive path
// delivers) on its channel's TX ring, each with its flow ID in the buffer's
// user metadata. TxOnce then, for one port:
//  1. takes up to TxBatch packets from the TX ring (channel.TakeTX validates
//     the slots);
//  2. copies each packet and its flow ID into the Switch's own frame buffers,
//     behind room for the L2 header, and releases the channel buffers: from
//     here on nothing the app writes can reach the checks or the wire;
//  3. checks each copy, counting every rejection in its own TxDrops counter;
//  4. writes the L2 header of the packets that passed and hands them to the
//     link in one Link.Write.
//
// Invariants, each checked by the tests:
//   - A rejected packet never reaches the link.
//   - Every check runs on the nexus's copy, and the link is given that same
//     copy: what is on the wire is byte for byte what was checked.
//   - No allocation per packet (or per batch) in steady state.

// User metadata layout of a TX buffer (channel pool.UserMetaLen = 32 bytes,
// app-writable shared memory), written by the app before Send:
//
//	bytes  0..15  flow ID: flow.Entry.ID() of the flow the packet belongs to,
//	              as the nexus told the app when it registered the flow
//	bytes 16..31  reserved: the app writes zeros, the nexus ignores them
//
// The nexus copies the flow ID together with the packet, before checking.
const (
	TxMetaFlowIDOff = 0
	TxMetaFlowIDLen = 16
)

// TxBatch is the most packets TxOnce takes from one TX ring (DESIGN §6.1).
// 64 packets amortise the ring refresh and the Link.Write call; the copies
// (64 × 1514 bytes at the default MTU) stay within a 128 KiB L2 cache.
const TxBatch = 64

// ethHeaderLen is the Ethernet II header TxOnce writes: dst and src MAC and
// the EtherType, no 802.1Q tag (netif.EthernetHeaderLen leaves room for one).
const ethHeaderLen = 14

// TxDrops counts the packets the transmit path rejected, one counter per
// check, in the order the checks run. A packet is counted once, by the first
// check it fails.
type TxDrops struct {
	// Length: the IP header claims more bytes than the app sent. (Claiming
	// fewer is fine: the packet is trimmed to the IP length.)
	Length uint64
	// MTU: the IP length exceeds the link's MTU. (No segmentation offload
	// yet, so there is no segmentation size that would allow it.)
	MTU uint64
	// Parse: packet.Parse rejected the (trimmed) packet, or it is not IPv4
	// or IPv6 at all.
	Parse uint64
	// IPv4Options: an IPv4 header with options (IHL > 5).
	IPv4Options uint64
	// SrcAddr: the source address is not one of the switch's addresses.
	SrcAddr uint64
	// SrcPort: the source (local) port is not held by this port for this
	// protocol, nor for the other of TCP/UDP.
	SrcPort uint64
	// Proto: the source port is this port's, but under the other protocol
	// (TCP sent on a UDP flow's port, or the reverse).
	Proto uint64
	// NoFlow: the source address and port are this port's, but the 5-tuple
	// matches no active flow (e.g. an unregistered remote).
	NoFlow uint64
	// NotOwner: the matching flow belongs to another port. Stricter than
	// Skywalk, which lets any channel of the same process send on a flow.
	NotOwner uint64
	// FlowID: the flow ID in the metadata is not the matching flow's.
	FlowID uint64
	// TornDown: the matching flow has been torn down. flow.Table.Lookup
	// never returns such an entry (the packet counts as NoFlow), so this
	// stays 0 unless that contract breaks; the check is kept as a guard.
	TornDown uint64
	// ListenerData: a listener flow sent something other than a TCP RST.
	ListenerData uint64
	// SYNRate: a TCP segment with SYN set (SYN or SYN-ACK) beyond the flow's
	// SYN budget (flow.SYNRate per second, bursts of flow.SYNBurst).
	SYNRate uint64
}

// txState is the transmit path's scratch, allocated once by New. Owned by the
// Switch's goroutine like the rest of the Switch.
type txState struct {
	hdr     int           // headroom in front of each copy: netif.HeaderLen of the link; immutable
	l2Len   int           // L2 header TxOnce writes: ethHeaderLen or 0; immutable
	mtu     int           // the link's MTU; immutable
	l2      [12]byte      // Ethernet dst and src MACs, copied into every frame; immutable
	bufs    []channel.Buf // TakeTX output; len TxBatch
	frames  [][]byte      // the nexus's copies; each hdr+mtu bytes, the packet at [hdr:]
	lens    []int         // bytes copied into frames[i][hdr:]
	ids     [][TxMetaFlowIDLen]byte
	out     [][]byte          // frames that passed, for Link.Write; cap TxBatch
	entries []*flow.Entry     // their flows, parallel to out
	flags   []packet.TCPFlags // their TCP flags, parallel to out
	l3Len   []int             // their L3 lengths, parallel to out
}

func (t *txState) init(opts Options, lt packet.LinkType, mtu int) {
	t.hdr, t.mtu = netif.HeaderLen(lt), mtu
	if lt == packet.Ethernet {
		t.l2Len = ethHeaderLen
	}
	copy(t.l2[0:6], opts.DstMAC[:])
	copy(t.l2[6:12], opts.SrcMAC[:])
	t.bufs = make([]channel.Buf, TxBatch)
	t.frames = make([][]byte, TxBatch)
	frameLen := netif.MaxFrameLen(mtu, lt)
	mem := make([]byte, TxBatch*frameLen)
	for i := range t.frames {
		t.frames[i] = mem[i*frameLen : (i+1)*frameLen : (i+1)*frameLen]
	}
	t.lens = make([]int, TxBatch)
	t.ids = make([][TxMetaFlowIDLen]byte, TxBatch)
	t.out = make([][]byte, 0, TxBatch)
	t.entries = make([]*flow.Entry, 0, TxBatch)
	t.flags = make([]packet.TCPFlags, 0, TxBatch)
	t.l3Len = make([]int, 0, TxBatch)
}

// TxOnce takes up to TxBatch packets from port's TX ring, checks them and
// writes those that pass to the link (see the transmit path above). It
// returns how many packets it took from the ring; Stats says what became of
// them. It never blocks.
//
// Errors: ErrNoPort for a port AddPort did not return; the channel's
// *channel.DefunctError (errors.Is channel.ErrDefunct) when the app broke the
// ring contract — the channel is closed, nothing was sent; the link's error
// from Link.Write, after the frames it accepted were counted. A link tail
// drop (device full) is the link's, counted in its TxDrops, not an error.
func (s *Switch) TxOnce(port flow.PortID) (int, error) {
	if port == HostPort || int(port) >= len(s.ports) || s.ports[port] == nil {
		return 0, fmt.Errorf("%w: %d", ErrNoPort, port)
	}
	ch := s.ports[port].ch
	t := &s.tx
	n, err := ch.TakeTX(t.bufs)
	if err != nil {
		return 0, fmt.Errorf("flowswitch tx port %d: %w", port, err)
	}
	if n == 0 {
		return 0, nil
	}

	// Copy first: packet and flow ID, out of the app-writable memory.
	meta := ch.Pool()
	for i, b := range t.bufs[:n] {
		c := min(len(b.Data), t.mtu) // more than the MTU fails a check below either way
		t.lens[i] = copy(t.frames[i][t.hdr:t.hdr+c], b.Data)
		copy(t.ids[i][:], meta.UserMeta(b.Index)[TxMetaFlowIDOff:TxMetaFlowIDOff+TxMetaFlowIDLen])
	}
	ch.Release(t.bufs[:n])
	clear(t.bufs[:n]) // drop the references into shared memory

	// Then check the copies.
	now := time.Now()
	for i := range n {
		s.txCheck(port, i, now)
	}

	if len(t.out) > 0 {
		w, err := s.link.Write(t.out)
		for j := range w {
			t.entries[j].CountOut(t.l3Len[j], t.flags[j])
			s.stats.TxPackets++
			s.stats.TxBytes += uint64(t.l3Len[j])
		}
		clear(t.out)
		clear(t.entries)
		t.out, t.entries, t.flags, t.l3Len = t.out[:0], t.entries[:0], t.flags[:0], t.l3Len[:0]
		if err != nil {
			return n, fmt.Errorf("flowswitch tx: %w", err)
		}
	}
	return n, nil
}

// txCheck runs the checks on copy i and, if it passes, frames it and appends
// it to the output batch.
func (s *Switch) txCheck(port flow.PortID, i int, now time.Time) {
	t := &s.tx
	d := &s.stats.TxDrops
	pkt := t.frames[i][t.hdr : t.hdr+t.lens[i]]

	// Lengths, from the IP header of the copy: more than the MTU is
	// oversize; more than was sent is a lie; less is trimmed.
	ipLen := claimedLen(pkt)
	switch {
	case ipLen < 0:
		d.Parse++
		return
	case ipLen > t.mtu:
		d.MTU++
		return
	case ipLen > len(pkt):
		d.Length++
		return
	}
	pkt = pkt[:ipLen]

	p := &s.parsed
	if err := packet.Parse(pkt, packet.RawIP, p); err != nil {
		d.Parse++
		return
	}
	if p.IPOptions {
		d.IPv4Options++
		return
	}
	k := p.TxKey()
	e := s.table.Lookup(k)
	switch {
	case e == nil:
		s.noFlowReason(d, k, port)
		return
	case e.Port() != port:
		d.NotOwner++
		return
	case e.ID() != t.ids[i]:
		d.FlowID++
		return
	case !e.Active():
		d.TornDown++
		return
	}
	tcp := p.Proto == packet.ProtoTCP && p.HasL4
	if e.Kind() != flow.Connected && !(tcp && p.Flags.Has(packet.TCPRst)) {
		d.ListenerData++
		return
	}
	if tcp && p.Flags.Has(packet.TCPSyn) && !e.AllowSYN(now) {
		d.SYNRate++
		return
	}

	// Passed: the nexus writes the L2 header in front of the copy.
	f := t.frames[i][t.hdr-t.l2Len : t.hdr+ipLen]
	if t.l2Len == ethHeaderLen {
		copy(f, t.l2[:])
		et := packet.EtherTypeIPv4
		if p.IPVersion == 6 {
			et = packet.EtherTypeIPv6
		}
		binary.BigEndian.PutUint16(f[12:14], et)
	}
	var fl packet.TCPFlags
	if tcp {
		fl = p.Flags
	}
	t.out = append(t.out, f)
	t.entries = append(t.entries, e)
	t.flags = append(t.flags, fl)
	t.l3Len = append(t.l3Len, ipLen)
}

// claimedLen returns the packet length the IP header of pkt claims, or -1 if
// pkt is too short to hold the fixed IP header or is not IPv4 or IPv6. An
// IPv6 jumbogram (payload length 0) claims just its fixed header, and is then
// rejected by Parse or the flow lookup.
func claimedLen(pkt []byte) int {
	if len(pkt) == 0 {
		return -1
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return -1
		}
		return int(binary.BigEndian.Uint16(pkt[2:4]))
	case 6:
		if len(pkt) < 40 {
			return -1
		}
		return 40 + int(binary.BigEndian.Uint16(pkt[4:6]))
	}
	return -1
}

// TxSync runs TxOnce on every user port once, in port order, and returns
// how many packets it took in all. A defunct channel fails only itself (its
// error is the channel's business); a link error stops the round and is
// returned.
func (s *Switch) TxSync() (int, error) {
	total := 0
	for id, p := range s.ports {
		if p == nil {
			continue
		}
		n, err := s.TxOnce(flow.PortID(id))
		total += n
		if err != nil && !errors.Is(err, channel.ErrDefunct) {
			return total, err
		}
	}
	return total, nil
}

// noFlowReason names why a transmitted packet matched no flow: a source
// address that is not ours, a source port this app does not hold, the right
// port under the wrong protocol, or an unregistered remote.
func (s *Switch) noFlowReason(d *TxDrops, k packet.Key, port flow.PortID) {
	src := k.LocalAddrPort()
	if !s.table.IsLocal(src.Addr()) {
		d.SrcAddr++
		return
	}
	if o, ok := s.table.PortOwner(k.Proto, src.Port()); ok && o == port {
		d.NoFlow++
		return
	}
	other := packet.ProtoTCP
	if k.Proto == packet.ProtoTCP {
		other = packet.ProtoUDP
	}
	if o, ok := s.table.PortOwner(other, src.Port()); ok && o == port {
		d.Proto++
		return
	}
	d.SrcPort++
}
