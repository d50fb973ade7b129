package flowswitch

import (
	"encoding/binary"
	"slices"
	"time"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/regulate"
)

// Receive admission of TCP listener flows: SYN floods (docs/design.md §5.6).
//
// A listener flow takes every packet of a TCP port that no connected flow
// claims: SYNs, the ACKs that complete handshakes, the first data of a
// connection whose flow is not registered yet, and whatever a flooder
// sends. Served first come, first served, a SYN flood fills the channel's
// RX ring and its pool (the SYN-ACKs waiting to leave hold buffers too),
// and a legitimate SYN, the handshake's last ACK or the data of the app's
// established connections is dropped with the flood, or waits behind it.
// So the switch admits a listener flow's packets before the copy by these
// rules:
//
//   - Lines. Listener packets are taken only while more than a quarter of
//     the RX ring is free and more than half of the port's pool is
//     available (channel buffers the pool may still hand out): the rest is
//     for the connected flows and the app's transmit path. A heavy source's
//     listener packets only while more than half of the ring is free, so
//     that the light sources (clients opening a few connections) find room
//     while a flooder keeps the ring filled to its line.
//   - Shares. Each source (the address, IPv6 by its /64) falls in one of
//     listenBuckets buckets, hashed with a random seed; a bucket has a
//     credit, one per listener packet admitted, halved every listenDecay. A
//     bucket is heavy from listenHeavy credits on (about 320 packets a
//     second), and the SYNs of a port's heavy sources share one token
//     bucket of listenHeavyRate a second: a SYN flood from a few sources
//     costs the stack a bounded part of its time, whatever its rate. (Only
//     SYNs: a client opening connections by the thousand sends each one's
//     last ACK and first data on the listener too; other floods from a
//     heavy source are held by its line.)
//   - Order. Within a flow batch that is over a line or holds a heavy
//     source, the packets are admitted in the order of their rank: their
//     bucket's credit plus the packets of their bucket before them in the
//     batch (water filling: a deficit round robin over the sources, with a
//     memory of about listenDecay).
//   - Answers. A port takes at most listenUnanswered SYNs it has not sent
//     a SYN-ACK for yet (the count is halved every listenDecay, for SYNs
//     the app never answers): when the app's transmit path is slower than
//     its receive path, the handshakes wait in the switch's choice, not in
//     the app's transmit queue, in front of everything the app sends.
//   - Known sources and retransmissions. A light source that completed a
//     handshake lately (a connected TCP flow registered with it as the
//     remote, in a bitmap kept for listenKnownAge to twice that) goes
//     first, down to an eighth of the ring and of the pool; so does a
//     light source's SYN refused before (a hash of its source, ports and
//     sequence number, kept for one to two listenRetryAge): the client's
//     retransmission. A spoofed flood from random sources is as light as
//     a new client, whose first SYN is then as likely to be refused as
//     the flood's; a returning client's is not, and a new client's
//     retransmission, a second later, gets in. (A spoofer that sends each
//     SYN twice gets its second copy in the same way: only as far as the
//     unanswered SYNs allow.)
//
// Refused packets count as Stats.ListenDrops (drop reason listen_share)
// and are captured as such. Packets of one source keep their order (a
// connection's packets always do); packets of different sources may be
// reordered among themselves, which no connection sees. The cost while no
// listener flow is over a line and no source is heavy is a ring and a pool
// read per flow batch and a hash per packet.

const (
	// listenBuckets is the number of source buckets: a power of two, 4 KiB
	// of credits. A legitimate client shares its bucket with a given
	// flooder with probability 1/listenBuckets.
	listenBuckets = 1024
	// listenHeavy is the credit from which a source is heavy: with credits
	// halved every listenDecay, a source admitted at r packets a second
	// holds about 2·r·listenDecay, so 64 is about 320 packets a second.
	listenHeavy = 64
	// listenDecay is how often credits are halved: the memory of the
	// share, short enough that a client behind a flooder's bucket is
	// light again within a second after the flood.
	listenDecay = 100 * time.Millisecond
	// listenHeavyRate and listenHeavyBurst are a token bucket per port on
	// the SYNs of all its heavy sources together: 10,000 a second, about a
	// quarter of the SYNs the user-space stack answers on two shared
	// cores, so that a flood from a few sources leaves the stack (its
	// receive path, the SYN-ACKs on the transmit path, their queues)
	// mostly to the light sources, while one legitimate host that opens
	// connections by the thousand still gets 10,000 a second (twice what
	// `skylane bench conns` opens).
	listenHeavyRate  = 10_000
	listenHeavyBurst = 256
	// listenRetryBits is the size of each retransmission bitmap (128 KiB):
	// a flood refused at 100,000 SYNs a second sets a tenth of its bits
	// within a listenRetryAge, so about one flood SYN in ten passes for a
	// retransmission (and is only put first, not let past the lines).
	listenRetryBits = 1 << 20
	// listenRetryAge is how long a bitmap is filled before it becomes the
	// old one: TCP resends a SYN after 1 s (RFC 6298), so a refused SYN is
	// remembered for one to two seconds.
	listenRetryAge = time.Second
	// listenUnanswered bounds the SYNs admitted to a port whose SYN-ACK
	// did not leave yet: the handshakes queued in the app, in its RX ring,
	// its stack and its transmit queue. 256 SYN-ACKs are a few
	// milliseconds of the app's transmit path, which a legitimate SYN
	// then waits behind at most, and above what the app has in flight
	// answering SYNs as fast as it can (its rate times its delay).
	listenUnanswered = 256
	// listenKnownBits is the size of each known-sources bitmap (8 KiB):
	// sources that completed a handshake; a spoofed source is in it by
	// chance with probability (known sources)/65536.
	listenKnownBits = 1 << 16
	// listenKnownAge is how long a known-sources bitmap is filled before
	// it becomes the old one: a source stays known for 30 to 60 seconds
	// after its last connection.
	listenKnownAge = 30 * time.Second
)

// listenShare is the switch's listener admission state (above). Its
// scratch slices have capacity FlowBatchLimit.
type listenShare struct {
	seed    uint64 // immutable: random, against crafted collisions
	credit  [listenBuckets]uint32
	rank    [listenBuckets]uint16 // scratch: all zero between calls
	decayAt int64                 // s.now() at which credits are next halved

	// retry holds the refused SYNs' hashes: [cur] filled now, the other
	// since up to listenRetryAge before; rotated at retryAt.
	retry   [2][]uint64 // listenRetryBits bits each, allocated on first use
	cur     int
	retryAt int64

	// known holds the sources with a connected TCP flow registered
	// (a completed handshake), hashed: [kcur] since knownAt -
	// listenKnownAge, the other the age before.
	known   [2][listenKnownBits / 64]uint64
	kcur    int
	knownAt int64

	order  []uint64 // scratch: rank<<16 | position in the flow batch
	bucket []uint16 // scratch: each position's bucket
	first  []bool   // scratch: each position goes first (retransmission, known source)
	keep   []bool   // scratch: each position admitted
	drop   []int32  // scratch: the refused packets, for the capture
}

func newListenShare(seed uint64, limit int) listenShare {
	return listenShare{
		seed:   seed,
		order:  make([]uint64, limit),
		bucket: make([]uint16, limit),
		first:  make([]bool, limit),
		keep:   make([]bool, limit),
		drop:   make([]int32, 0, limit),
	}
}

// isListener reports whether e's packets go through listenAdmit: a TCP
// listener flow. UDP listeners take a server's whole traffic and keep
// first come, first served.
func isListener(e *flow.Entry) bool {
	return e.Kind() != flow.Connected && e.Key().Proto == packet.ProtoTCP
}

// sourceHash returns the seeded hash of p's source address (IPv6 by its
// /64).
func (ls *listenShare) sourceHash(p *packet.Parsed) uint64 {
	return ls.addrHash(p.Src().As16(), p.IPVersion == 4)
}

// addrHash returns the seeded hash of address a (v4-mapped if v4; IPv6 by
// its /64).
func (ls *listenShare) addrHash(a [16]byte, v4 bool) uint64 {
	hi := binary.LittleEndian.Uint64(a[0:8])
	lo := uint64(0)
	if v4 {
		lo = binary.LittleEndian.Uint64(a[8:16])
	}
	return regulate.Mix(ls.seed ^ hi ^ lo*0x9e3779b97f4a7c15)
}

// knownBit returns the bit of source hash h in a known-sources bitmap
// (other bits of h than the bucket's).
func knownBit(h uint64) uint64 { return h >> 20 & (listenKnownBits - 1) }

// isKnown reports whether source hash h completed a handshake lately.
func (ls *listenShare) isKnown(h uint64) bool {
	k := knownBit(h)
	return (ls.known[0][k/64]|ls.known[1][k/64])&(1<<(k%64)) != 0
}

// registered notes a flow registered on the switch: a connected TCP flow
// is a completed handshake (an accepted connection's flow is registered
// once netstack has it established; a dialed one's remote is a server the
// app chose), so its remote is a known source.
func (ls *listenShare) registered(k packet.Key, kind flow.Kind, now int64) {
	if kind != flow.Connected || k.Proto != packet.ProtoTCP {
		return
	}
	ls.ageKnown(now)
	b := knownBit(ls.addrHash(k.Remote, k.Version == 4))
	ls.known[ls.kcur][b/64] |= 1 << (b % 64)
}

// ageKnown rotates the known-sources bitmaps every listenKnownAge.
func (ls *listenShare) ageKnown(now int64) {
	if now < ls.knownAt {
		return
	}
	ls.kcur ^= 1
	clear(ls.known[ls.kcur][:])
	if now-ls.knownAt >= int64(listenKnownAge) {
		clear(ls.known[ls.kcur^1][:]) // both are too old
	}
	ls.knownAt = now + int64(listenKnownAge)
}

// retryBit returns the bit of the SYN p (from source hash h) in a
// retransmission bitmap.
func retryBit(h uint64, p *packet.Parsed) uint64 {
	return regulate.Mix(h^uint64(p.SrcPort)<<48^uint64(p.DstPort)<<32^uint64(p.Seq)) & (listenRetryBits - 1)
}

// age halves the credits every listenDecay and rotates the retransmission
// bitmaps every listenRetryAge.
func (ls *listenShare) age(now int64) {
	if now-ls.decayAt >= 32*int64(listenDecay) {
		clear(ls.credit[:]) // 32 halvings or more: every credit is zero
		ls.decayAt = now
	}
	for now >= ls.decayAt {
		for b := range ls.credit {
			ls.credit[b] >>= 1
		}
		ls.decayAt += int64(listenDecay)
	}
	if now >= ls.retryAt && ls.retry[0] != nil {
		ls.cur ^= 1
		clear(ls.retry[ls.cur])
		if now-ls.retryAt >= int64(listenRetryAge) {
			clear(ls.retry[ls.cur^1]) // both are too old
		}
		ls.retryAt = now + int64(listenRetryAge)
	}
}

// listenAdmit trims the listener flow batch fq to the packets its port may
// take under the rules above, in arrival order, counts and captures the
// others, and charges the admitted ones to their sources.
func (s *Switch) listenAdmit(fq *flowQueue) {
	ls := &s.listen
	now := s.now()
	ls.age(now)
	ls.ageKnown(now)
	r := &fq.p.rx
	used := 0
	if r.gen == s.gen {
		used = r.used // admitted to this port earlier in the batch
	}
	free, size := fq.p.ch.RxFree()
	free -= used
	pl := fq.p.ch.Pool()
	avail, most := pl.Available(), int(pl.MaxBuffers()) // the batch's earlier flow batches have their buffers already
	lightRoom := min(free-size/4, avail-most/2)
	heavyRoom := min(free-size/2, lightRoom)
	retryRoom := min(free-size/8, avail-most/8)
	if now-r.synsAt >= int64(listenDecay) {
		// Halved as credits are, so that SYNs the app dropped without an
		// answer (its accept queue full) do not close the gate for good.
		r.synsOut >>= 1
		r.synsAt = now
	}
	pkts := fq.pkts
	n := len(pkts)
	heavy := false
	syns := 0
	for j, i := range pkts {
		h := ls.sourceHash(&s.rx[i])
		b := uint16(h & (listenBuckets - 1))
		ls.bucket[j] = b
		light := ls.credit[b] < listenHeavy
		heavy = heavy || !light
		first := false
		if light {
			first = ls.isKnown(h)
			if p := &s.rx[i]; !first && ls.retry[0] != nil && s.flags[i]&(packet.TCPSyn|packet.TCPAck) == packet.TCPSyn {
				k := retryBit(h, p)
				first = (ls.retry[0][k/64]|ls.retry[1][k/64])&(1<<(k%64)) != 0
			}
		}
		ls.first[j] = first
		if s.flags[i]&(packet.TCPSyn|packet.TCPAck) == packet.TCPSyn {
			syns++
		}
	}
	if !heavy && n <= lightRoom && r.synsOut+syns <= listenUnanswered {
		r.synsOut += syns
		for _, b := range ls.bucket[:n] {
			ls.credit[b]++
		}
		return
	}
	for j, b := range ls.bucket[:n] {
		rank := uint64(0)
		if !ls.first[j] {
			rank = 1 + uint64(ls.credit[b]) + uint64(ls.rank[b])
		}
		ls.order[j] = rank<<16 | uint64(j)
		ls.rank[b]++
	}
	for _, b := range ls.bucket[:n] {
		ls.rank[b] = 0
	}
	slices.Sort(ls.order[:n])
	if !r.heavyOn {
		r.heavy, _ = regulate.NewTokenBucket(listenHeavyRate, listenHeavyBurst, now) // valid constants
		r.heavyOn = true
	}
	keep := ls.keep[:n]
	admitted := 0
	for _, o := range ls.order[:n] {
		j := int(o & 0xffff)
		syn := s.flags[pkts[j]]&(packet.TCPSyn|packet.TCPAck) == packet.TCPSyn
		switch {
		case ls.first[j]:
			keep[j] = admitted < retryRoom && r.synsOut < 2*listenUnanswered
		case syn && r.synsOut >= listenUnanswered:
			keep[j] = false
		case ls.credit[ls.bucket[j]] < listenHeavy:
			keep[j] = admitted < lightRoom
		default:
			keep[j] = admitted < heavyRoom && (!syn || r.heavy.Allow(1, now))
		}
		if keep[j] {
			admitted++
			if syn {
				r.synsOut++
			}
		}
	}
	kept, drop := pkts[:0], ls.drop[:0]
	for j, i := range pkts {
		if keep[j] {
			ls.credit[ls.bucket[j]]++
			kept = append(kept, i)
			continue
		}
		drop = append(drop, i)
		if s.flags[i]&(packet.TCPSyn|packet.TCPAck) == packet.TCPSyn {
			ls.remember(&s.rx[i], now)
		}
	}
	fq.pkts = kept
	s.stats.ListenDrops += uint64(len(drop))
	s.capRxPkts(fq.p, drop, "listen_share")
	ls.drop = drop[:0]
}

// synAnswered counts a SYN-ACK that port id's app sent (see listenAdmit).
func (s *Switch) synAnswered(id flow.PortID) {
	if int(id) < len(s.ports) && s.ports[id] != nil && s.ports[id].rx.synsOut > 0 {
		s.ports[id].rx.synsOut--
	}
}

// remember notes the refused SYN p, so that its retransmission goes first.
// The bitmaps are allocated at the first SYN refused: a switch that never
// sees a flood does not pay their 256 KiB.
func (ls *listenShare) remember(p *packet.Parsed, now int64) {
	if ls.retry[0] == nil {
		ls.retry[0] = make([]uint64, listenRetryBits/64)
		ls.retry[1] = make([]uint64, listenRetryBits/64)
		ls.retryAt = now + int64(listenRetryAge)
	}
	k := retryBit(ls.sourceHash(p), p)
	ls.retry[ls.cur][k/64] |= 1 << (k % 64)
}
