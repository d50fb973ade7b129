package flowswitch

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/skylane/skylane/neigh"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/packet"
)

// L2 on Ethernet links (docs/design.md §6.4, §8b): the nexus, not the
// app, owns neighbour resolution and the Ethernet header.
//
// Receive. Every ARP frame, and every IPv6 frame carrying ICMPv6 (neighbour
// solicitations and advertisements), is handed to the resolver
// (neigh.Resolver.HandleFrame) before any flow lookup. The resolver learns
// from it and, for a request for one of the switch's addresses, writes an
// answer, which the switch writes to the device at the end of the input
// batch. A frame the resolver consumed reaches no app. With a host link,
// the kernel needs ARP and NDP too, for its own addresses and to resolve
// its own next hops, so the rule is: every consumed frame is copied to the
// host port as well, except a request (ARP request, NS) for a user-space-
// only address (one of LocalAddrs not in Options.HostAddrs), which the
// resolver alone answers. For a request for one of HostAddrs the kernel
// answers and the resolver's answer is discarded, so the peer hears one
// answer. (Give the host port the device's MAC, as a kernel interface on
// the device itself has, so both sides name the same MAC.)
//
// Transmit. The switch asks the resolver (neigh.NextHops.Resolve) for
// the MAC toward each packet's destination: a neigh.Resolver takes the
// destination as the next hop (on-link only); a neigh.Routes looks up
// the destination's cached route (gateway or on-link, from the kernel's
// routing table) and that next hop's MAC. Each run of packets of one flow
// is resolved once per TxOnce; with a MAC, the switch writes it into the
// frames' headers; without one, each packet is copied into the resolver's
// hold queue (Hold: bounded per address and in all, a refusal counted as
// L2Stats.HoldDrops), and the resolver sends it, with its header, once
// the next hop resolves (Poll). Those held packets and the resolver's own
// frames (answers, solicitations) go to the device directly, not through
// the AQM: they are few, and already late.
//
// Poll runs right after an input batch in which the resolver consumed a
// frame (so packets held for an address that just resolved leave before
// any later packet of the same flow: no reordering), right after a
// transmit that held packets (so a new address's solicitation leaves at
// once), and at least every neigh.PollInterval (Service, from Round), or
// every neigh.PendingPoll while a resolver whose answers come from
// outside the datapath (Routes) holds packets (Waiting).
//
// A static Options.DstMAC overrides resolution for transmit: every frame
// carries it (point-to-point wires: the memif tests and benches).

// L2Stats count the switch's side of neighbour resolution; the resolver's
// own counters are in Snapshot.Neighbors.
type L2Stats struct {
	Frames      uint64 // ARP and NDP frames the resolver consumed
	Replies     uint64 // answers written to the device
	Suppressed  uint64 // answers discarded: the address is one of HostAddrs, the kernel answers
	ToHost      uint64 // consumed frames also given to the host port
	Held        uint64 // transmitted packets handed to the resolver to wait for their next hop
	HoldDrops   uint64 // packets the resolver refused to hold (queue full, too long), dropped
	PollFrames  uint64 // frames Poll returned (solicitations, released packets), written to the device
	DeviceDrops uint64 // of Replies and PollFrames, those the device refused (full)
}

// l2State is the switch's neighbour-resolution state; its buffers are
// allocated by init, so the datapath does not allocate.
type l2State struct {
	nb        neigh.NextHops // nil: no resolution, ARP goes to the host port or is dropped
	dynamic   bool           // transmit resolves the destination MAC (no static DstMAC); immutable
	hostAddrs []netip.Addr   // immutable: Options.HostAddrs, unmapped

	replies  [][]byte // one answer buffer per frame of an input batch
	out      [][]byte // answers to write; cap Batch
	consumed bool     // the resolver consumed a frame in this input batch: Poll after it
	asked    bool     // transmit held packets: Poll after it, so the solicitation leaves now

	pollBufs  [][]byte
	pollSizes []int
	pollOut   [][]byte
	lastPoll  int64 // ns, on the switch's clock

	stats L2Stats
}

func (l *l2State) init(opts Options, s *Switch) error {
	lt := s.linkType
	nb := opts.Neighbors
	if nb != nil && lt != packet.Ethernet {
		return fmt.Errorf("%w: Neighbors on a %v link: neighbour resolution is for Ethernet", ErrBadOptions, lt)
	}
	if nb == nil && lt == packet.Ethernet && opts.SrcMAC != ([6]byte{}) && opts.DstMAC == ([6]byte{}) {
		var err error
		nb, err = neigh.New(neigh.Options{
			MAC:   neigh.MAC(opts.SrcMAC),
			Addrs: opts.LocalAddrs,
			// The resolver's clock is the switch's, so a synthetic clock
			// drives both.
			Now: func() time.Time { return s.epoch.Add(time.Duration(s.now())) },
		})
		if err != nil {
			return fmt.Errorf("%w: neighbour resolver: %w", ErrBadOptions, err)
		}
	}
	for _, a := range opts.HostAddrs {
		l.hostAddrs = append(l.hostAddrs, a.Unmap())
	}
	if nb == nil {
		return nil
	}
	l.nb = nb
	l.dynamic = opts.DstMAC == [6]byte{}
	n := s.batch
	l.replies = frameBufs(n, neigh.NDPFrameLen)
	l.out = make([][]byte, 0, n)
	l.pollBufs = frameBufs(n, netif.MaxFrameLen(opts.Link.MTU(), lt))
	l.pollSizes = make([]int, n)
	l.pollOut = make([][]byte, 0, n)
	l.lastPoll = s.now()
	return nil
}

// Neighbors returns the switch's neighbour resolver, or nil. Its methods
// lock it, so it may be used from any goroutine (e.g. to read its cache).
func (s *Switch) Neighbors() neigh.NextHops { return s.l2.nb }

// pollEvery is the longest the resolver may go without a Poll.
func (l *l2State) pollEvery() time.Duration {
	if l.nb.Waiting() {
		return neigh.PendingPoll
	}
	return neigh.PollInterval
}

// isHostAddr reports whether a is one of Options.HostAddrs.
func (l *l2State) isHostAddr(a netip.Addr) bool {
	for _, h := range l.hostAddrs {
		if h == a {
			return true
		}
	}
	return false
}

// neighFrame hands frame i of the input batch (ARP, or IPv6 with ICMPv6)
// to the resolver and reports whether it consumed it. A consumed frame is
// not the flows' business: its answer, if any, is queued for the device,
// and it is marked for the host port by the rule at the top of this file.
func (s *Switch) neighFrame(i int) bool {
	l := &s.l2
	frame := s.bufs[i][:s.sizes[i]]
	reply := l.replies[len(l.out)] // at most one answer per frame: len(out) <= i
	n, consumed := l.nb.HandleFrame(frame, reply)
	if !consumed {
		return false
	}
	l.stats.Frames++
	l.consumed = true
	request, target, ok := l2Request(frame)
	if n > 0 {
		if ok && l.isHostAddr(target) {
			l.stats.Suppressed++ // the kernel answers for its own address
		} else {
			l.out = append(l.out, reply[:n])
		}
	}
	if s.host != nil && !(ok && request && s.table.IsLocal(target) && !l.isHostAddr(target)) {
		l.stats.ToHost++
		s.hostMark[i] = true
		s.nHost++
	}
	return true
}

// l2Request parses an ARP or NDP frame for the host-port rule: whether it
// is a request (ARP request, NS) and the address it is about (the ARP
// target, the NS/NA target). ok is false for a frame that does not parse.
func l2Request(frame []byte) (request bool, target netip.Addr, ok bool) {
	var a neigh.ARP
	if neigh.ParseARP(frame, &a) == nil {
		return a.Op == neigh.ARPRequest, a.TargetIP, true
	}
	var m neigh.NDP
	if neigh.ParseNDP(frame, &m) == nil {
		return m.Type == neigh.TypeNS, m.Target.Unmap(), true
	}
	return false, netip.Addr{}, false
}

// flush writes the answers of this input batch to the device, then, if the
// resolver consumed a frame, polls it. It returns the frames written.
func (l *l2State) flush(s *Switch) (int, error) {
	if l.nb == nil {
		return 0, nil
	}
	n := 0
	if len(l.out) > 0 {
		w, err := s.writeDirect(l.out)
		l.stats.Replies += uint64(w)
		l.stats.DeviceDrops += uint64(len(l.out) - w)
		clear(l.out)
		l.out = l.out[:0]
		n += w
		if err != nil {
			return n, fmt.Errorf("flowswitch neighbour answers: %w", err)
		}
	}
	if l.consumed {
		l.consumed = false
		k, err := l.poll(s, s.now())
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// pollAsked polls the resolver if a transmit since the last poll held
// packets: a new address's solicitation (or a packet queued behind a
// resolved one) then leaves at once, not at the next PollInterval.
func (l *l2State) pollAsked(s *Switch) (int, error) {
	if !l.asked {
		return 0, nil
	}
	l.asked = false
	return l.poll(s, s.now())
}

// pollDue polls the resolver if PollInterval has passed since the last
// poll.
func (l *l2State) pollDue(s *Switch, now int64) (int, error) {
	if l.nb == nil || now-l.lastPoll < int64(l.pollEvery()) {
		return 0, nil
	}
	return l.poll(s, now)
}

// poll writes what the resolver has to send (solicitations due, held
// packets whose next hop resolved) to the device, in batches, until it
// has nothing more. It returns the frames written.
func (l *l2State) poll(s *Switch, now int64) (int, error) {
	l.lastPoll = now
	total := 0
	for {
		k := l.nb.Poll(l.pollBufs, l.pollSizes)
		if k == 0 {
			return total, nil
		}
		for i := range k {
			l.pollOut = append(l.pollOut, l.pollBufs[i][:l.pollSizes[i]])
		}
		w, err := s.writeDirect(l.pollOut)
		l.stats.PollFrames += uint64(k)
		l.stats.DeviceDrops += uint64(k - w)
		total += w
		clear(l.pollOut)
		l.pollOut = l.pollOut[:0]
		if err != nil {
			return total, fmt.Errorf("flowswitch neighbour poll: %w", err)
		}
		if k < len(l.pollBufs) {
			return total, nil
		}
	}
}

// resolveOut gives each packet that passed the transmit checks (t.out) its
// destination MAC, or hands it to the resolver to wait for one; held
// packets leave the output batch and their runs. The destination is read
// from each packet, not from its flow's key: a listener flow (a TCP
// handshake, a UDP server) sends to many remotes. Consecutive packets to
// one destination are resolved once.
func (s *Switch) resolveOut() {
	l, t := &s.l2, &s.tx
	var (
		ip   netip.Addr
		mac  neigh.MAC
		ok   bool
		have bool
	)
	w, rw, j := 0, 0, 0
	for _, r := range t.runs {
		kept, bytes := 0, uint64(0)
		for x := j; x < j+r.n; x++ {
			f := t.out[x]
			if dst := packetDst(f[t.l2Len:]); !have || dst != ip {
				ip, have = dst, true
				mac, ok = l.nb.Resolve(ip)
			}
			if ok {
				copy(f[0:6], mac[:])
				t.out[w], t.flags[w], t.outSeg[w] = f, t.flags[x], t.outSeg[x]
				w++
				kept++
				bytes += uint64(len(f) - t.l2Len)
				continue
			}
			// A super packet is not held: the resolver sends what it
			// holds as it is, and only MTU frames go out that way. TCP
			// sends it again.
			if t.outSeg[x] == 0 && l.nb.Hold(ip, f[t.l2Len:]) {
				l.stats.Held++
				l.asked = true
			} else {
				l.stats.HoldDrops++
			}
		}
		j += r.n
		if kept > 0 {
			if kept < r.n {
				r.n, r.bytes = kept, bytes
			}
			t.runs[rw] = r
			rw++
		}
	}
	clear(t.runs[rw:])
	t.runs, t.out, t.flags = t.runs[:rw], t.out[:w], t.flags[:w]
	if t.supers > 0 {
		clear(t.outSeg[w:])
		t.supers = 0
		for _, seg := range t.outSeg[:w] {
			if seg != 0 {
				t.supers++
			}
		}
	}
}

// packetDst returns the destination address of the IP packet p, which
// passed the transmit checks (so its header is whole).
func packetDst(p []byte) netip.Addr {
	if p[0]>>4 == 6 {
		return netip.AddrFrom16([16]byte(p[24:40]))
	}
	return netip.AddrFrom4([4]byte(p[16:20]))
}
