package flowswitch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/pool"
)

// Transmit path (docs/design.md §6, anti-spoofing after US20190303221A1).
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
//     link in one Link.Write, or to Options.TxQueue with each packet's flow
//     token and advisory index.
//
// The checks have a fast path for the common case, a port sending many
// packets of one flow: each port keeps the flow of the last packet that
// passed the full checks and a packet.Template of its headers. A packet
// the template matches (same addresses, ports and protocol, no options,
// consistent lengths: see packet.Template's contract) with the same flow
// ID, while the flow table is unchanged (flow.Table.Version), would pass
// the parse, lookup, owner, flow ID and torn-down checks exactly as the
// full path does, so only the per-packet checks that remain run: MTU,
// the listener's (RSTs, and SYN-ACKs without data) and the SYN rate.
// Anything else takes the full path, which counts the reason.
//
// A listener flow answers handshakes on its own, so that a SYN costs the
// nexus no state and no control request (a SYN flood none either): it may
// send RSTs and SYN-ACKs that carry nothing but their headers, to any
// remote, from its own local address and port only; it may send nothing
// else. A connection's other packets need its own (connected) flow, which
// the app registers once the handshake completed; until then they are
// ListenerData drops. SYN-ACKs on a listener do not take from a SYN
// budget: they answer SYNs, at the rate the peers send them.
//
// Invariants, each checked by the tests:
//   - A rejected packet never reaches the link.
//   - Every check runs on the nexus's copy, and the link is given that same
//     copy: what is on the wire is byte for byte what was checked.
//   - The fast path accepts only what the full path accepts.
//   - No allocation per packet (or per batch) in steady state.

// TxBatch is the most packets TxOnce takes from one TX ring (docs/design.md §6.1).
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
	// MTU: the IP length exceeds the link's MTU and no segmentation size
	// is set.
	MTU uint64
	// Parse: packet.Parse rejected the (trimmed) packet, or it is not IPv4
	// or IPv6 at all.
	Parse uint64
	// IPv4Options: an IPv4 header with options (IHL > 5).
	IPv4Options uint64
	// SegProto: a super packet (above the MTU, with a segmentation size)
	// that is not unfragmented TCP straight after the IP header (no IPv6
	// extension headers).
	SegProto uint64
	// SegSize: a TCP super packet whose segmentation size is below
	// channel.MinSegSize or makes segments (its IP and TCP headers plus the size)
	// longer than the MTU.
	SegSize uint64
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
	// TornDown: the packet's flow ID and key are those of a flow of this
	// port that Switch.Teardown tore down recently (the port remembers its
	// last tornRecent): the app still sends on a closed flow. Checked when
	// the lookup found no flow, or a flow with another ID.
	TornDown uint64
	// ListenerData: a listener flow sent something other than a TCP RST
	// or a SYN-ACK with no data.
	ListenerData uint64
	// SYNRate: a TCP segment with SYN set (SYN or SYN-ACK) on a connected
	// flow beyond the flow's SYN budget (flow.SYNRate per second, bursts
	// of flow.SYNBurst).
	SYNRate uint64
	// Fragment: a later IP fragment (no ports) of a datagram whose first
	// fragment this port did not just send on a flow it owns (txfrag.go).
	Fragment uint64
}

// TxDrop is one transmit check's drop counter, under the name the JSON
// snapshot (Drop.Reason) and the metrics (reason label) give it.
type TxDrop struct {
	Reason  string
	Packets uint64
}

// List returns every counter of d, zero or not, in the order the checks
// run. It is the one place that names them: Total, Reasons, Snapshot.Drops
// and the metrics all read it, so a new check is counted everywhere once it
// is added here (a test fails until it is).
func (d TxDrops) List() []TxDrop {
	return []TxDrop{
		{"length", d.Length}, {"mtu", d.MTU}, {"parse", d.Parse}, {"ipv4_options", d.IPv4Options},
		{"seg_proto", d.SegProto}, {"seg_size", d.SegSize},
		{"src_addr", d.SrcAddr}, {"src_port", d.SrcPort}, {"proto", d.Proto}, {"no_flow", d.NoFlow},
		{"not_owner", d.NotOwner}, {"flow_id", d.FlowID}, {"torn_down", d.TornDown},
		{"listener_data", d.ListenerData}, {"syn_rate", d.SYNRate}, {"fragment", d.Fragment},
	}
}

// Total returns the packets the transmit checks dropped, all reasons.
func (d TxDrops) Total() uint64 {
	var n uint64
	for _, r := range d.List() {
		n += r.Packets
	}
	return n
}

// Reasons returns every counter of d by its name (List's), zero or not.
func (d TxDrops) Reasons() map[string]uint64 {
	l := d.List()
	m := make(map[string]uint64, len(l))
	for _, r := range l {
		m[r.Reason] = r.Packets
	}
	return m
}

// TxQueue is the transmit queue between the checks and the device: the
// regulation layer (the AQM of docs/design.md §7) implements it and owns the device
// link's writing side. Without one (Options.TxQueue nil), TxOnce writes to
// the link itself.
type TxQueue interface {
	// Enqueue takes frames that passed every transmit check, framed for
	// the device (L2 header written), in the order the ports sent them;
	// tokens[i] and adv[i] are frame i's flow token and advisory index
	// (flow.Entry.Token, AdvisoryIndex: flow.NoAdvisory for a flow without
	// one), written by the nexus, never by the app. The slices are valid only during the call: Enqueue copies what
	// it keeps. It returns how many frames it accepted, a prefix; the rest
	// are its drops, counted by it.
	Enqueue(frames [][]byte, tokens, adv []uint32) int
	// Flush writes to the device what the queue lets go now. Round calls
	// it once per round, after the ports' transmit; an error ends the
	// round (the nexus then fails its link).
	Flush() error
}

// portTx is a port's transmit state.
type portTx struct {
	// Fast path (see above): the flow of the last packet that passed the
	// full checks, its headers, and the table version it was found at.
	entry   *flow.Entry
	tmpl    packet.Template
	ver     uint64
	tcp, v6 bool // the template's protocol and family

	torn  tornFlows // recently torn-down flows, for TxDrops.TornDown
	frags txFrags   // datagrams sent in fragments (txfrag.go)

	packets, bytes, drops uint64
}

// txState is the transmit path's scratch, allocated once by New. Guarded by
// the switch's lock like the rest of the Switch.
type txState struct {
	hdr            int           // headroom in front of each copy: netif.HeaderLen of the link; immutable
	l2Len          int           // L2 header TxOnce writes: ethHeaderLen or 0; immutable
	mtu            int           // the link's MTU; immutable
	bufs           []channel.Buf // TakeTX output; len TxBatch
	frames         [][]byte      // the nexus's copies of this batch: small[i] or big[i], the packet at [hdr:]
	copies         [][]byte      // copies[i]: frames[i][hdr:], where packet i is copied
	small          [][]byte      // hdr+MTU bytes each, MACs written; immutable
	big            [][]byte      // hdr+pool.MaxBufferSize bytes each, for super packets; nil until the first
	swapped        []int         // indices whose frames are big ones now (useBig); cap TxBatch
	srcMAC, dstMAC [6]byte       // immutable
	lens           []int         // bytes copied into copies[i]
	ids            [][channel.TxMetaFlowIDLen]byte
	segs           []int             // segmentation size of copies[i] (channel.TxMetaSegSizeOff)
	ipLens         []int             // Template.MatchEach results: 0, or the IP length
	mflags         []packet.TCPFlags // and the TCP flags

	// The packets that passed, in order: out for Link.Write, flags and runs
	// for the counters (runs: how many consecutive ones belong to a flow).
	out    [][]byte          // cap TxBatch
	outSeg []int             // len TxBatch; outSeg[i]: out[i]'s segmentation size if a super packet, else 0
	supers int               // super packets in out: outSeg is all zeros when 0
	flags  []packet.TCPFlags // parallel to out
	runs   []txRun
	tokens []uint32 // flow token of each of out, filled for TxQueue only
	adv    []uint32 // advisory index of each of out, filled for TxQueue only

	now    time.Time // the clock for the SYN budget, read once per TxOnce when first needed
	hasNow bool

	gso txGSO // super packets on their way out (txgso.go)
}

// txRun is n consecutive passed packets of flow e, of bytes L3 bytes.
type txRun struct {
	e     *flow.Entry
	n     int
	bytes uint64
}

func (t *txState) init(opts Options, lt packet.LinkType, mtu int) {
	t.hdr, t.mtu = netif.HeaderLen(lt), mtu
	t.bufs = make([]channel.Buf, TxBatch)
	if lt == packet.Ethernet {
		t.l2Len = ethHeaderLen
	}
	t.srcMAC, t.dstMAC = opts.SrcMAC, opts.DstMAC
	// MTU-sized copies for the common case, packed (a batch of them stays
	// within few pages: TLB misses, not copies, cost most at 64 bytes);
	// copies of a whole channel buffer for super packets, made on the
	// first one.
	t.small = t.newFrames(netif.MaxFrameLen(mtu, lt))
	t.frames = make([][]byte, TxBatch)
	t.copies = make([][]byte, TxBatch)
	for i, f := range t.small {
		t.frames[i], t.copies[i] = f, f[t.hdr:]
	}
	t.swapped = make([]int, 0, TxBatch)
	t.lens = make([]int, TxBatch)
	t.ids = make([][channel.TxMetaFlowIDLen]byte, TxBatch)
	t.segs = make([]int, TxBatch)
	t.ipLens = make([]int, TxBatch)
	t.mflags = make([]packet.TCPFlags, TxBatch)
	t.out = make([][]byte, 0, TxBatch)
	t.outSeg = make([]int, TxBatch)
	t.flags = make([]packet.TCPFlags, 0, TxBatch)
	t.runs = make([]txRun, 0, TxBatch)
	t.tokens = make([]uint32, 0, TxBatch)
	t.adv = make([]uint32, 0, TxBatch)
	t.gso.init(opts.Link, lt, mtu)
}

// useBig makes copy i a whole-buffer one, for a super packet, until the
// next useSmall. (Only these swaps write the slices: a pointer store per
// packet costs a write barrier check.)
func (t *txState) useBig(i int) {
	if t.big == nil {
		t.big = t.newFrames(t.hdr + max(t.mtu, pool.MaxBufferSize))
	}
	t.frames[i], t.copies[i] = t.big[i], t.big[i][t.hdr:]
	t.swapped = append(t.swapped, i)
}

// useSmall puts back the MTU-sized copies useBig swapped out.
func (t *txState) useSmall() {
	for _, i := range t.swapped {
		t.frames[i], t.copies[i] = t.small[i], t.small[i][t.hdr:]
	}
	t.swapped = t.swapped[:0]
}

// newFrames allocates TxBatch copy frames of size bytes, their MACs
// written: they never change and nothing else writes in front of the
// copies, so each packet then gets only its EtherType.
func (t *txState) newFrames(size int) [][]byte {
	fs := frameBufs(TxBatch, size)
	if t.l2Len == ethHeaderLen {
		for _, f := range fs {
			l2 := f[t.hdr-ethHeaderLen:]
			copy(l2[0:6], t.dstMAC[:])
			copy(l2[6:12], t.srcMAC[:])
		}
	}
	return fs
}

// clock returns the time for this TxOnce's SYN budget checks, reading the
// clock on first use only: most batches hold no SYN.
func (t *txState) clock() time.Time {
	if !t.hasNow {
		t.now, t.hasNow = time.Now(), true
	}
	return t.now
}

// passed appends frame f of flow e, with TCP flags fl and segmentation
// size seg (0: not a super packet), to the output.
func (t *txState) passed(f []byte, e *flow.Entry, fl packet.TCPFlags, seg int) {
	t.out = append(t.out, f)
	if seg != 0 {
		t.outSeg[len(t.out)-1] = seg
		t.supers++
	}
	t.flags = append(t.flags, fl)
	t.addRun(e, 1, uint64(len(f)-t.l2Len))
}

// addRun counts n more passed packets of flow e, of bytes L3 bytes.
func (t *txState) addRun(e *flow.Entry, n int, bytes uint64) {
	if k := len(t.runs) - 1; k >= 0 && t.runs[k].e == e {
		t.runs[k].n += n
		t.runs[k].bytes += bytes
	} else {
		t.runs = append(t.runs, txRun{e, n, bytes})
	}
}

// TxOnce takes up to TxBatch packets from port's TX ring, checks them and
// writes those that pass to the link or the TxQueue (see the transmit path
// above); with Regulation it files them in the AQM and flushes it. It returns how many packets it took from the ring; Stats says
// what became of them. It never blocks (but for the switch's lock).
//
// Errors: ErrNoPort for a port AddPort did not return or one removed; the
// channel's *channel.DefunctError (errors.Is channel.ErrDefunct) when the
// app broke the ring contract — the channel is closed, nothing was sent,
// and the port is removed; the link's error from Link.Write, after the
// frames it accepted were counted. A link tail drop (device full) is the
// link's, counted in its TxDrops, not an error.
func (s *Switch) TxOnce(port flow.PortID) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.portOf(port)
	if p == nil {
		return 0, fmt.Errorf("flowswitch tx port %d: %w", port, ErrNoPort)
	}
	var (
		n   int
		err error
	)
	if s.reg == nil {
		n, err = s.txTake(p, TxBatch, 0)
	} else {
		now := s.now()
		n, err = s.txTake(p, TxBatch, now)
		if _, ferr := s.regFlush(now); err == nil {
			err = ferr
		}
	}
	if _, perr := s.l2.pollAsked(s); err == nil {
		err = perr
	}
	return n, err
}

// txTake takes up to limit (at most TxBatch) packets from port p's TX ring,
// checks them and hands those that pass to the AQM (with Regulation, at
// now), the TxQueue or the link. See TxOnce for the errors.
func (s *Switch) txTake(p *port, limit int, now int64) (int, error) {
	ch := p.ch
	t := &s.tx
	n, err := ch.TakeTX(t.bufs[:limit])
	if err != nil {
		s.removePort(p.id)
		return 0, fmt.Errorf("flowswitch tx port %d: %w", p.id, err)
	}
	if n == 0 {
		return 0, nil
	}

	// Copy each packet and its flow ID out of the app-writable memory, then
	// check the copies.
	meta := ch.Pool()
	lens, ids, segs := t.lens[:n], t.ids[:n], t.segs[:n]
	t.useSmall()
	small := len(t.small[0]) - t.hdr
	for i, b := range t.bufs[:n] {
		if len(b.Data) > small { // a super packet (or too long: the checks drop it)
			t.useBig(i)
		}
		lens[i] = copy(t.copies[i], b.Data)
		if b.Flags&channel.FlagCsumPartial != 0 && !s.trusted {
			// The checksum the app left to the wire, completed
			// while the copy is in cache (csum.go). Done before
			// the checks, which look at no checksum: a packet they
			// refuse cost one pass for nothing.
			if packet.CompleteChecksum(t.copies[i][:lens[i]]) {
				s.stats.TxCsumCompleted++
			}
		}
		m := meta.UserMeta(b.Index)
		copy(ids[i][:], m[channel.TxMetaFlowIDOff:channel.TxMetaFlowIDOff+channel.TxMetaFlowIDLen])
		segs[i] = int(binary.LittleEndian.Uint16(m[channel.TxMetaSegSizeOff:]))
	}
	ch.Release(t.bufs[:n])
	clear(t.bufs[:n]) // drop the references into shared memory
	t.hasNow = false
	if s.capt.on {
		s.capTxChecks(p, n)
	} else {
		s.txChecks(p, n)
	}
	p.tx.drops += uint64(n - len(t.out))
	if s.l2.dynamic && len(t.out) > 0 {
		s.resolveOut() // packets with no next hop yet wait in the resolver
	}
	if s.capt.on && len(t.out) > 0 {
		s.capFrames(capture.DeviceTx, p.ch.Name(), t.out)
	}

	if len(t.out) == 0 {
		t.resetOut()
		return n, nil
	}
	if s.reg != nil {
		s.enqueue(p, now)
		t.resetOut()
		return n, nil
	}
	var w int
	if s.txq != nil {
		for _, r := range t.runs {
			for range r.n {
				t.tokens = append(t.tokens, r.e.Token())
				t.adv = append(t.adv, r.e.AdvisoryIndex())
			}
		}
		w = s.enqueueTxq()
		t.tokens, t.adv = t.tokens[:0], t.adv[:0]
	} else {
		w, err = s.writeOut()
	}
	// Count the accepted prefix, one update per run of a flow.
	var total uint64
	j := 0
	for _, r := range t.runs {
		if j >= w {
			break
		}
		k, bytes := j+r.n, r.bytes
		if k > w { // the link took part of the run: count its bytes
			k, bytes = w, 0
			for _, f := range t.out[j:k] {
				bytes += uint64(len(f) - t.l2Len)
			}
		}
		r.e.AddOut(uint64(k-j), bytes, t.flags[k-1])
		total += bytes
		j = k
	}
	p.tx.packets += uint64(w)
	p.tx.bytes += total
	s.stats.TxPackets += uint64(w)
	s.stats.TxBytes += total
	t.resetOut()
	if err != nil {
		return n, fmt.Errorf("flowswitch tx: %w", err)
	}
	return n, nil
}

// resetOut empties the output batch. out points into the switch's own
// frames: no need to clear it; runs hold entries, which must not be kept
// alive.
func (t *txState) resetOut() {
	clear(t.runs)
	if t.supers > 0 {
		clear(t.outSeg)
		t.supers = 0
	}
	t.out, t.flags, t.runs = t.out[:0], t.flags[:0], t.runs[:0]
}

// TxSync runs TxOnce on every user port once, in port order, and returns
// how many packets it took in all. A defunct channel fails only itself (its
// port is removed; its error is the channel's business); a link error
// stops the round and is returned. With Regulation it is one round robin
// over the ports with per-port budgets (regulation.go), then the AQM is
// flushed to the device.
func (s *Switch) TxSync() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.txSync()
}

func (s *Switch) txSync() (int, error) {
	n, err := s.txPorts()
	if _, perr := s.l2.pollAsked(s); err == nil {
		err = perr
	}
	return n, err
}

func (s *Switch) txPorts() (int, error) {
	if s.reg != nil {
		return s.txRound()
	}
	total := 0
	for _, p := range s.ports {
		if p == nil {
			continue
		}
		n, err := s.txTake(p, TxBatch, 0)
		total += n
		if err != nil && !errors.Is(err, channel.ErrDefunct) {
			return total, err
		}
	}
	return total, nil
}
