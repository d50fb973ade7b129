package flowswitch_test

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/regulate"
)

// Regulation tests. The real-time ones run the switch's datapath (Round,
// driven as the nexus does: drive) on one end of a rate-limited memif wire
// (the wire's own token bucket is the link) and read the other end in a
// goroutine; apps are goroutines on real channels. Each packet carries its
// sequence number and send time in its payload, so the reader measures
// loss, order and sojourn per flow. They assert only what a loaded host
// cannot break (loss, order, drops, advisories, shares); their latency and
// utilisation figures are logged, and bounded on a synthetic clock by
// regsim_test.go. The others drive the datapath by hand under a synthetic
// clock.

// regPort is one app: its channel, its port and its one UDP flow,
// localIP:sport → remoteIP:6000.
type regPort struct {
	ch    *channel.Channel
	app   *channel.App
	id    flow.PortID
	flow  *flow.Entry
	sport uint16
}

// regRig is a regulated switch on end a of a wire; the test owns end b.
type regRig struct {
	sw    *flowswitch.Switch
	dev   netif.Link // the switch's end
	peer  netif.Link
	ports []*regPort
}

// newRegRig builds the rig: link rate bits/s (0: none) as the switch's
// LinkRate and, on the real clock (now nil), the wire's too; on a
// synthetic clock the wire is unpaced (memif's bucket runs on the real
// clock) and the switch's pacer is the link. One port per entry of adv,
// which says whether its app honours advisories. chOpts, if set,
// configures every channel.
func newRegRig(t testing.TB, rate int64, ro flowswitch.RegulationOptions, now func() int64, adv []bool, chOpts channel.Options) *regRig {
	t.Helper()
	wireRate := rate
	if now != nil {
		wireRate = 0
	}
	a, b, err := memif.NewPair(memif.Options{Name: "reg", QueueLen: 4096, Rate: wireRate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	sw, err := flowswitch.New(flowswitch.Options{Link: a, LocalAddrs: []netip.Addr{localIP},
		SrcMAC: txSrcMAC, DstMAC: txDstMAC, Regulation: &ro, LinkRate: rate, Now: now,
		IdleWait: 200 * time.Microsecond})
	if err != nil {
		t.Fatal(err)
	}
	r := &regRig{sw: sw, dev: a, peer: b}
	for i, honour := range adv {
		co := chOpts
		co.Name = fmt.Sprintf("reg%d", i)
		ch, app := newChannel(t, co)
		id, err := sw.AddPortWith(ch, flowswitch.AddPortOptions{Advisories: honour})
		if err != nil {
			t.Fatal(err)
		}
		p := &regPort{ch: ch, app: app, id: id, sport: uint16(5000 + i)}
		p.flow, err = sw.Register(id, packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, p.sport),
			netip.AddrPortFrom(remoteIP, 6000)), flow.Connected)
		if err != nil {
			t.Fatal(err)
		}
		r.ports = append(r.ports, p)
	}
	return r
}

// run starts the datapath (drive); the returned func stops it and checks
// it met no error.
func (r *regRig) run(t testing.TB) func() {
	var ids []flow.PortID
	var chans []*channel.Channel
	for _, p := range r.ports {
		ids, chans = append(ids, p.id), append(chans, p.ch)
	}
	stop := drive(r.sw, r.dev, ids, chans)
	return func() {
		if err := stop(); err != nil {
			t.Errorf("Round = %v", err)
		}
	}
}

// Payload of every test packet: sequence number and send time (ns since
// the sender's epoch).
const (
	payloadSeq  = 0
	payloadTime = 8
	payloadMin  = 16
)

// sender is an app sending one flow's packets of size IP bytes: total of
// them (0: until stopped), at pps packets per second (0: as fast as the
// TX ring takes them). An honouring sender reads its flow's advisory
// entry before each batch and sends nothing while it is SUSPENDED (the
// stack's side of docs/design.md §7). Its clock is the time since epoch:
// the real one (run) or a synthetic one (step, from a simRig).
type sender struct {
	p      *regPort
	size   int
	total  int
	pps    float64
	honour bool
	batch  int
	epoch  time.Time
	lag    time.Duration // how long it takes to act on a resume (waking up); 0: at once

	sent      int // packets the TX ring took
	suspended int // times it found its flow suspended
	events    int // EventAdvisory seen

	started      bool
	start        time.Duration // the first step's time: pacing counts from it
	wasSuspended bool
	resumed      time.Duration // when it found its flow admissible again; -1: not suspended
	pkt          []byte
	bufs         []channel.Buf
	evs          []channel.Event
}

// stepResult says why a sender's step sent nothing more, what it waits for.
type stepResult int

const (
	stepSent      stepResult = iota // it sent what it could: step again
	stepDone                        // total sent
	stepSuspended                   // SUSPENDED: wait for an advisory event
	stepNotDue                      // paced: the next packet is not due yet
	stepFull                        // no free buffer, or the TX ring is full
)

// step makes one attempt, at time now, without blocking: it reads the
// app's events (advisory changes, and segments to map: reading them keeps
// the event ring from overflowing) and, unless its flow is suspended,
// sends what is due, stamped with now.
func (s *sender) step(now time.Duration) (stepResult, error) {
	app := s.p.app
	idx := int(s.p.flow.AdvisoryIndex())
	if !s.started {
		s.started, s.start = true, now
		tmpl := txPkt{proto: packet.ProtoUDP, src: localIP, dst: remoteIP, sport: s.p.sport, dport: 6000, size: s.size}
		s.pkt = tmpl.buildRaw()
		s.bufs = make([]channel.Buf, cmp.Or(s.batch, 16))
		s.evs = make([]channel.Event, 32)
	}
	if s.total > 0 && s.sent >= s.total {
		return stepDone, nil
	}
	n, err := app.Events(s.evs)
	if err != nil {
		return 0, err
	}
	for _, e := range s.evs[:n] {
		if e.Kind == channel.EventAdvisory && int(e.Arg) == idx {
			s.events++
		}
	}
	if s.honour {
		if !app.Admissible(uint32(idx)) {
			if !s.wasSuspended {
				s.suspended++
				s.wasSuspended = true
			}
			s.resumed = -1
			return stepSuspended, nil
		}
		if s.wasSuspended {
			if s.resumed < 0 {
				s.resumed = now
			}
			if now-s.resumed < s.lag {
				return stepSuspended, nil
			}
		}
		s.wasSuspended = false
	}
	want := len(s.bufs)
	if s.total > 0 {
		want = min(want, s.total-s.sent)
	}
	if s.pps > 0 {
		due := int((now-s.start).Seconds()*s.pps) + 1 - s.sent
		if due <= 0 {
			return stepNotDue, nil
		}
		want = min(want, due)
	}
	bufs := s.bufs[:want]
	k, err := app.Alloc(bufs)
	if err != nil || k == 0 {
		return stepFull, err
	}
	id := s.p.flow.ID()
	for i := range k {
		b := &bufs[i]
		b.Data = b.Data[:copy(b.Data, s.pkt)]
		pl := b.Data[28:]
		binary.LittleEndian.PutUint64(pl[payloadSeq:], uint64(s.sent+i))
		binary.LittleEndian.PutUint64(pl[payloadTime:], uint64(now))
		m, err := app.Meta(b.Index)
		if err != nil {
			return 0, err
		}
		clear(m)
		copy(m[channel.TxMetaFlowIDOff:], id[:])
	}
	got, err := app.Send(bufs[:k])
	if err != nil {
		return 0, err
	}
	s.sent += got
	if got < k { // the TX ring is full: give the rest back
		if _, err := app.Free(bufs[got:k]); err != nil {
			return 0, err
		}
		return stepFull, nil
	}
	return stepSent, nil
}

// run steps the sender on the real clock until it has sent its total or
// stop closes, waiting as each step says.
func (s *sender) run(stop <-chan struct{}) error {
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		r, err := s.step(time.Since(s.epoch))
		if err != nil {
			return err
		}
		switch r {
		case stepDone:
			return nil
		case stepSuspended:
			// The resume posts an event: sleep until one comes (the
			// events were read by the step). The timeout is a safety net.
			if _, err := s.p.app.WaitFor(channel.WaitEvents, 50*time.Millisecond); err != nil {
				return err
			}
		case stepNotDue:
			time.Sleep(time.Duration(float64(time.Second) / s.pps)) // pacing the offered load
		case stepFull:
			if err := s.p.app.Wait(time.Millisecond); err != nil {
				return err
			}
		}
	}
}

// buildRaw is build without a testing.TB, for sender goroutines.
func (p txPkt) buildRaw() []byte {
	b := make([]byte, p.size)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:4], uint16(p.size))
	b[8], b[9] = 64, p.proto
	s4, d4 := p.src.As4(), p.dst.As4()
	copy(b[12:16], s4[:])
	copy(b[16:20], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(b[10:12], ^uint16(sum))
	binary.BigEndian.PutUint16(b[20:22], p.sport)
	binary.BigEndian.PutUint16(b[22:24], p.dport)
	binary.BigEndian.PutUint16(b[24:26], uint16(p.size-20))
	return b
}

// flowRecord is what the wire reader saw of one flow.
type flowRecord struct {
	packets, bytes uint64
	next           uint64 // the sequence number expected next
	gaps           uint64 // packets missing before one that arrived
	reordered      uint64
	sojourn        []time.Duration // when recorded
}

// flowLog is what arrived at the peer end, per flow (UDP source port).
type flowLog struct {
	record map[uint16]bool // flows whose sojourns are kept
	flows  map[uint16]*flowRecord
}

func newFlowLog(record ...uint16) flowLog {
	l := flowLog{record: map[uint16]bool{}, flows: map[uint16]*flowRecord{}}
	for _, p := range record {
		l.record[p] = true
	}
	return l
}

// add records frame f, arrived at now (on the senders' clock: their
// payload's send times are since the same epoch).
func (l *flowLog) add(f []byte, now time.Duration) {
	if len(f) < 14+28+payloadMin {
		return
	}
	sport := binary.BigEndian.Uint16(f[14+20:])
	pl := f[14+28:]
	seq := binary.LittleEndian.Uint64(pl[payloadSeq:])
	r := l.flows[sport]
	if r == nil {
		r = &flowRecord{}
		l.flows[sport] = r
	}
	r.packets++
	r.bytes += uint64(len(f))
	switch {
	case seq > r.next:
		r.gaps += seq - r.next
		r.next = seq + 1
	case seq < r.next:
		r.reordered++
	default:
		r.next++
	}
	if l.record[sport] {
		r.sojourn = append(r.sojourn, now-time.Duration(binary.LittleEndian.Uint64(pl[payloadTime:])))
	}
}

// snapshot returns a copy of one flow's record.
func (l *flowLog) snapshot(sport uint16) flowRecord {
	r := l.flows[sport]
	if r == nil {
		return flowRecord{}
	}
	c := *r
	c.sojourn = slices.Clone(r.sojourn)
	return c
}

// reset clears one flow's recorded sojourns.
func (l *flowLog) reset(sport uint16) {
	if r := l.flows[sport]; r != nil {
		r.sojourn = r.sojourn[:0]
	}
}

// wireReader reads everything arriving at the peer end, in real time, into
// a flowLog.
type wireReader struct {
	link  netif.Link
	epoch time.Time

	mu   sync.Mutex
	log  flowLog // guarded by mu
	done chan error
	stop chan struct{}
}

func startReader(link netif.Link, epoch time.Time, record ...uint16) *wireReader {
	w := &wireReader{link: link, epoch: epoch, log: newFlowLog(record...),
		done: make(chan error, 1), stop: make(chan struct{})}
	go func() { w.done <- w.loop() }()
	return w
}

func (w *wireReader) loop() error {
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, netif.MaxFrameLen(w.link.MTU(), w.link.LinkType()))
	}
	sizes := make([]int, len(bufs))
	for {
		select {
		case <-w.stop:
			return nil
		default:
		}
		if err := w.link.Wait(5 * time.Millisecond); err != nil {
			return err
		}
		n, err := w.link.Read(bufs, sizes)
		if err != nil {
			return err
		}
		now := time.Since(w.epoch)
		w.mu.Lock()
		for i, f := range bufs[:n] {
			w.log.add(f[:sizes[i]], now)
		}
		w.mu.Unlock()
	}
}

// snapshot returns a copy of one flow's record.
func (w *wireReader) snapshot(sport uint16) flowRecord {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.log.snapshot(sport)
}

// reset clears one flow's recorded sojourns.
func (w *wireReader) reset(sport uint16) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.log.reset(sport)
}

func (w *wireReader) close(t testing.TB) {
	close(w.stop)
	if err := <-w.done; err != nil {
		t.Errorf("wire reader: %v", err)
	}
}

// p99 returns the 99th percentile of d.
func p99(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)*99)/100]
}

// startSenders runs each sender in a goroutine; the returned func stops
// them and reports their errors.
func startSenders(t testing.TB, ss ...*sender) (stop func(), done <-chan struct{}) {
	st := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, len(ss))
	for _, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.run(st); err != nil {
				errs <- err
			}
		}()
	}
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(st)
			<-all
			close(errs)
			for err := range errs {
				t.Errorf("sender: %v", err)
			}
		})
	}, all
}

const testLinkRate = 10_000_000 // 10 Mbit/s: ~830 frames/s of 1514 bytes

// One app bursting at 10× the link's capacity (raw UDP: no advisories),
// on real time through the datapath the nexus runs, does not change
// another app's loss (zero): the burst is dropped early, at the queue,
// never from the victim's flow, and the paced queue never overruns the
// device. The latency the burst adds is logged only: on real time it is
// the host's as much as the switch's (a loaded 2-core machine delays any
// goroutine by tens of ms). Its bound (the AQM target) is checked on
// synthetic time by TestRegulationBurstIsolationSim and measured by
// `skylane bench burst` (rpc-p99-under-bulk).
func TestRegulationBurstIsolation(t *testing.T) {
	r := newRegRig(t, testLinkRate, flowswitch.RegulationOptions{}, nil, []bool{false, false}, channel.Options{})
	epoch := time.Now()
	victim, burst := r.ports[0], r.ports[1]
	w := startReader(r.peer, epoch, victim.sport)
	defer w.close(t)
	stopRun := r.run(t)
	defer stopRun()

	// Idle: the victim alone, 200 packets/s of 200 bytes (a small RPC).
	vs := &sender{p: victim, size: 200, pps: 200, epoch: epoch, batch: 1}
	stopV, _ := startSenders(t, vs)
	waitFor(t, 10*time.Second, func() bool { return w.snapshot(victim.sport).packets >= 100 })
	idle := p99(w.snapshot(victim.sport).sojourn)
	w.reset(victim.sport)

	// Burst: 10× the link in 1500-byte packets, for a second and a half.
	const burstSize = 1500
	pps := 10 * float64(testLinkRate) / 8 / (burstSize + 14)
	bs := &sender{p: burst, size: burstSize, pps: pps, epoch: epoch, batch: 32}
	t0 := time.Now()
	stopB, _ := startSenders(t, bs)
	time.Sleep(1500 * time.Millisecond) // the burst's duration, not a synchronisation
	stopB()
	elapsed := time.Since(t0)
	loaded := w.snapshot(victim.sport)
	stopV()

	// The sender catches up after any delay (it sends what is due), so
	// only a machine some 5× too slow offers less than twice the link,
	// which the queue must drop from: a rig failure, not the switch's.
	offered := float64(bs.sent) * (burstSize + 14) * 8 / elapsed.Seconds()
	if offered < 2*testLinkRate {
		t.Fatalf("rig: the burst offered only %.1f× the link (%d packets in %v)", offered/testLinkRate, bs.sent, elapsed)
	}
	t.Logf("victim p99 idle %v, under a %.1f× burst %v (%d samples); burst sent %d",
		idle, offered/testLinkRate, p99(loaded.sojourn), len(loaded.sojourn), bs.sent)
	// Every victim packet sent arrives: give the last ones their sojourn.
	waitFor(t, 10*time.Second, func() bool { return w.snapshot(victim.sport).packets == uint64(vs.sent) })
	final := w.snapshot(victim.sport)
	if final.gaps != 0 || final.reordered != 0 {
		t.Errorf("victim lost %d and reordered %d of %d packets", final.gaps, final.reordered, vs.sent)
	}
	snap := r.sw.Snapshot()
	rg := snap.Regulation
	if rg.EarlyDrops+rg.CoDelDrops+rg.OverflowDrops == 0 {
		t.Errorf("a 10× burst was not dropped at the queue: %+v", rg)
	}
	for _, f := range snap.Flows {
		if f.Token == victim.flow.Token() && f.AQMDrops != 0 {
			t.Errorf("the victim's flow lost %d packets at the queue", f.AQMDrops)
		}
	}
	if ls := r.sw.Stats().Regulation.LinkDrops; ls != 0 {
		t.Errorf("the paced queue overran the device: %d refused", ls)
	}
}

// waitFor polls cond until it holds or d passes (then the test fails).
func waitFor(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(time.Millisecond)
	}
}

// A sender that honours advisories (stops on SUSPENDED, starts again when
// the entry clears) loses no packet at the nexus queue, however much
// faster than the link it would go: the queue suspends it instead of
// dropping, and resumes it. The share of the link it kept busy is logged
// only: on real time it is the host's as much as the switch's. That it
// is resumed before the link runs dry is checked on synthetic time by
// TestRegulationAdvisoryNoLossSim and measured by `skylane bench burst`
// (bulk-utilisation).
func TestRegulationAdvisoryNoLoss(t *testing.T) {
	const rate = 20_000_000
	r := newRegRig(t, rate, flowswitch.RegulationOptions{}, nil, []bool{true}, channel.Options{})
	epoch := time.Now()
	p := r.ports[0]
	w := startReader(r.peer, epoch)
	defer w.close(t)
	stopRun := r.run(t)
	defer stopRun()
	const total, size = 2500, 1000
	s := &sender{p: p, size: size, total: total, honour: true, epoch: epoch, batch: 16}
	t0 := time.Now()
	stop, done := startSenders(t, s)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the sender did not finish")
	}
	stop()
	waitFor(t, 5*time.Second, func() bool { return w.snapshot(p.sport).packets == total })
	elapsed := time.Since(t0)
	rec := w.snapshot(p.sport)
	rg := checkHeldBack(t, r.sw, rec, s)
	util := float64(total*(size+14)*8) / elapsed.Seconds() / rate
	t.Logf("%d packets in %v: %.2f of the link; %d suspends, %d resumes", total, elapsed, util, rg.Suspends, rg.Resumes)
}

// checkHeldBack checks what an honouring sender's run shows on any
// clock, given what reached the wire of its flow: nothing lost or
// reordered, no drop at the queue, and the sender suspended and resumed.
// It returns the regulation's counters.
func checkHeldBack(t testing.TB, sw *flowswitch.Switch, rec flowRecord, s *sender) *flowswitch.SnapshotRegulation {
	t.Helper()
	if rec.gaps != 0 || rec.reordered != 0 {
		t.Errorf("lost %d, reordered %d", rec.gaps, rec.reordered)
	}
	rg := sw.Snapshot().Regulation
	if rg.CoDelDrops+rg.OverflowDrops+rg.EarlyDrops != 0 {
		t.Errorf("queue drops: %+v", rg)
	}
	if rg.Suspends == 0 || rg.Resumes == 0 || s.suspended == 0 || s.events == 0 {
		t.Errorf("the sender was never held back: %d suspends, %d resumes published; it saw %d suspensions, %d events",
			rg.Suspends, rg.Resumes, s.suspended, s.events)
	}
	return rg
}

// Eight bulk flows from eight channels share a rate-limited link fairly,
// on real time: Jain's index of their throughput ≥ 0.95 (a ratio among
// the flows, which a slow host slows alike). The utilisation is logged
// only; TestRegulationFairnessSim checks it on synthetic time, and
// `skylane bench burst` (fairness/flows=8) measures both.
func TestRegulationFairness(t *testing.T) {
	const rate = 20_000_000
	adv := make([]bool, 8)
	for i := range adv {
		adv[i] = true
	}
	r := newRegRig(t, rate, flowswitch.RegulationOptions{}, nil, adv, channel.Options{})
	epoch := time.Now()
	w := startReader(r.peer, epoch)
	defer w.close(t)
	stopRun := r.run(t)
	defer stopRun()
	var ss []*sender
	for _, p := range r.ports {
		ss = append(ss, &sender{p: p, size: 1200, honour: true, epoch: epoch, batch: 16})
	}
	stop, _ := startSenders(t, ss...)
	defer stop()
	time.Sleep(500 * time.Millisecond) // warm-up: every flow has a queue
	before := make([]uint64, len(r.ports))
	for i, p := range r.ports {
		before[i] = w.snapshot(p.sport).bytes
	}
	t0 := time.Now()
	time.Sleep(1500 * time.Millisecond) // the measured window
	got := make([]uint64, len(r.ports))
	var sum uint64
	for i, p := range r.ports {
		got[i] = w.snapshot(p.sport).bytes - before[i]
		sum += got[i]
	}
	elapsed := time.Since(t0)
	stop()
	j := regulate.Jain(got)
	util := float64(sum*8) / elapsed.Seconds() / rate
	t.Logf("bytes per flow %v: Jain %.3f, utilisation %.2f", got, j, util)
	if j < 0.95 {
		t.Errorf("Jain's index %.3f < 0.95: %v", j, got)
	}
	if rg := r.sw.Snapshot().Regulation; rg.OverflowDrops+rg.CoDelDrops+rg.EarlyDrops != 0 {
		t.Errorf("advisory flows lost packets at the queue: %+v", rg)
	}
}

// An app that never drains its RX ring while packets keep coming is
// declared stalled after the (shortened) timeout: its channel is defunct
// with ReasonStalled, its port removed, its flows torn down and its memory
// returned; the other app goes on receiving. Time is synthetic.
func TestRegulationStall(t *testing.T) {
	var clock int64
	now := func() int64 { return clock }
	const timeout = 2 * time.Second
	r := newRegRig(t, 0, flowswitch.RegulationOptions{StallTimeout: timeout}, now, []bool{true}, channel.Options{})
	healthy := r.ports[0]
	fds := nettest.OpenFDs(t)
	ch, err := channel.New(channel.Options{Name: "stalled", RxSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	app, err := ch.AttachLocal()
	if err != nil {
		t.Fatal(err)
	}
	id := r.sw.AddPort(ch)
	stalledFlow, err := r.sw.Register(id, packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, 7000),
		netip.AddrPortFrom(remoteIP, 6000)), flow.Connected)
	if err != nil {
		t.Fatal(err)
	}
	rg := &rig{sw: r.sw, peer: r.peer}
	bufs := make([]channel.Buf, 64)
	got := 0
	step := func(i int) {
		rg.write(t, udpFrameFrom(t, netip.AddrPortFrom(remoteIP, 6000), 7000, "s", 0),
			udpFrameFrom(t, netip.AddrPortFrom(remoteIP, 6000), healthy.sport, "h", 0))
		if _, err := r.sw.RxOnce(); err != nil {
			t.Fatal(err)
		}
		if _, err := r.sw.Service(); err != nil {
			t.Fatal(err)
		}
		n, err := healthy.app.Receive(bufs)
		if err != nil {
			t.Fatal(err)
		}
		got += n
		healthy.app.Free(bufs[:n])
		healthy.ch.Sync()
		if ch.Err() == nil {
			ch.Sync()
		}
	}
	// 100 ms per step: the stalled app's ring (64) fills after 64 steps,
	// then the packets it is sent are refused.
	i := 0
	for ; ch.Err() == nil && i < 200; i++ {
		clock += int64(100 * time.Millisecond)
		step(i)
	}
	var de *channel.DefunctError
	if !errors.As(ch.Err(), &de) || de.Reason != channel.ReasonStalled {
		t.Fatalf("after %d steps the stalled channel is %v", i, ch.Err())
	}
	// The ring was full after 64 steps, and refused a packet at the
	// next; the stall is seen within the timeout plus two check periods
	// (a quarter of it each) after that.
	if full := 65 + int((timeout+2*timeout/4)/(100*time.Millisecond)); i > full {
		t.Errorf("defunct after %d steps, want at most %d", i, full)
	}
	if err := app.Err(); !errors.Is(err, channel.ErrDefunct) {
		t.Errorf("the app was not told: %v", err)
	}
	snap := r.sw.Snapshot()
	if snap.Regulation.Stalled != 1 || snap.Totals.PortsRemoved != 1 || len(snap.Ports) != 1 {
		t.Errorf("after the stall: %+v, %d ports", snap.Regulation, len(snap.Ports))
	}
	var active bool
	r.sw.Do(func() { active = stalledFlow.Active() })
	if active {
		t.Error("the stalled port's flow is still active")
	}
	app.Close()
	if n := nettest.OpenFDs(t); n != fds {
		t.Errorf("%d file descriptors open, %d before the stalled channel: its memory is not returned", n, fds)
	}
	// The healthy app was never touched, and still receives.
	before := got
	for range 10 {
		clock += int64(100 * time.Millisecond)
		step(0)
	}
	if got-before != 10 || healthy.ch.Err() != nil {
		t.Errorf("the healthy app got %d of 10 after the stall (%v)", got-before, healthy.ch.Err())
	}
}

// Advisory events, step by step under a synthetic clock: a flow that
// overwhelms the queue is suspended (its entry reads SUSPENDED and the app
// gets an EventAdvisory), it is resumed once it drained (the entry clears,
// another event), and it lost nothing. A teardown discards its queued
// packets and clears its entry.
func TestRegulationAdvisoryEvents(t *testing.T) {
	var clock int64
	now := func() int64 { return clock }
	const rate = 8_000_000 // 1 MB/s: a 1014-byte frame every ~1 ms
	ro := flowswitch.RegulationOptions{Queue: regulate.Options{Limit: 64}, NoMitigation: true}
	// The wire is unpaced (memif's clock is real); the switch's pacer is
	// the link, on the synthetic clock.
	r := newRegRig(t, rate, ro, now, []bool{true}, channel.Options{})
	p := r.ports[0]
	rg := &rig{sw: r.sw, peer: r.peer, chans: []*channel.Channel{p.ch}, apps: []*channel.App{p.app}, ports: []flow.PortID{p.id}}
	idx := int(p.flow.AdvisoryIndex())
	var pkts [][]byte
	for range 40 {
		pkts = append(pkts, txPkt{proto: packet.ProtoUDP, src: localIP, dst: remoteIP, sport: p.sport, dport: 6000, size: 1000}.build(t))
	}
	rg.send(t, 0, p.flow.ID(), pkts...)
	if _, err := r.sw.TxSync(); err != nil {
		t.Fatal(err)
	}
	// SuspendBacklog is Limit/4 = 16 packets: 40 queued at once suspend it.
	st, _, err := p.app.Advisory(idx)
	if err != nil || st != channel.AdvisorySuspended {
		t.Fatalf("advisory %d after 40 packets at once: %d, %v", idx, st, err)
	}
	if ev := advisoryEvents(t, p.app, idx); ev != 1 {
		t.Fatalf("%d advisory events, want 1", ev)
	}
	snap := r.sw.Snapshot()
	if f := snapFlow(snap, p.flow); f == nil || !f.Suspended || f.Queued == 0 {
		t.Fatalf("flow in the snapshot: %+v", f)
	}
	// Let it drain: 1 ms per frame.
	wire := 0
	for range 200 {
		clock += int64(time.Millisecond)
		if _, err := r.sw.Service(); err != nil {
			t.Fatal(err)
		}
		wire += len(rg.wire(t))
		if st, _, _ := p.app.Advisory(idx); st == channel.AdvisoryNone {
			break
		}
	}
	if st, _, _ := p.app.Advisory(idx); st != channel.AdvisoryNone {
		t.Fatal("never resumed")
	}
	if ev := advisoryEvents(t, p.app, idx); ev != 1 {
		t.Fatalf("%d advisory events at the resume, want 1", ev)
	}
	q := r.sw.Stats().Regulation
	if q.Suspends != 1 || q.Resumes != 1 || q.Queue.CoDelDrops+q.Queue.OverflowDrops+q.Queue.EarlyDrops != 0 {
		t.Errorf("%+v", q)
	}
	if q.Queue.Packets == 0 || wire+q.Queue.Packets != 40 {
		t.Errorf("%d on the wire, %d queued at the resume, want some queued and 40 in all", wire, q.Queue.Packets)
	}
	// Suspend again, then tear down: the queued packets go, the entry
	// clears.
	rg.send(t, 0, p.flow.ID(), pkts...)
	r.sw.TxSync()
	if st, _, _ := p.app.Advisory(idx); st != channel.AdvisorySuspended {
		t.Fatal("not suspended the second time")
	}
	queued := r.sw.Stats().Regulation.Queue.Packets
	r.sw.Teardown(p.flow)
	if st, _, _ := p.app.Advisory(idx); st != channel.AdvisoryNone {
		t.Error("the torn-down flow's entry is still SUSPENDED")
	}
	if q := r.sw.Stats().Regulation.Queue; q.Forgotten != uint64(queued) || q.Packets != 0 {
		t.Errorf("after the teardown: %d queued before, %+v", queued, q)
	}
}

// advisoryEvents reads the app's events and counts the advisory ones for
// index idx.
func advisoryEvents(t testing.TB, app *channel.App, idx int) int {
	t.Helper()
	evs := make([]channel.Event, 64)
	n, err := app.Events(evs)
	if err != nil {
		t.Fatal(err)
	}
	c := 0
	for _, e := range evs[:n] {
		if e.Kind == channel.EventAdvisory && int(e.Arg) == idx {
			c++
		}
	}
	return c
}

func snapFlow(s flowswitch.Snapshot, e *flow.Entry) *flowswitch.FlowStats {
	for i := range s.Flows {
		if s.Flows[i].Token == e.Token() {
			return &s.Flows[i]
		}
	}
	return nil
}

// A port with a rate cap sends no faster than it, in steady state (here
// over a synthetic second), whatever its app queues.
func TestRegulationPortRate(t *testing.T) {
	var clock int64
	now := func() int64 { return clock }
	ro := flowswitch.RegulationOptions{NoMitigation: true}
	r := newRegRig(t, 0, ro, now, nil, channel.Options{})
	ch, err := channel.New(channel.Options{Name: "capped"})
	if err != nil {
		t.Fatal(err)
	}
	app, err := ch.AttachLocal()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close(); ch.Close() })
	const rate, burst = 800_000, 4000 // 100 kB/s
	id, err := r.sw.AddPortWith(ch, flowswitch.AddPortOptions{Rate: rate, Burst: burst})
	if err != nil {
		t.Fatal(err)
	}
	e, err := r.sw.Register(id, packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, 5000),
		netip.AddrPortFrom(remoteIP, 6000)), flow.Connected)
	if err != nil {
		t.Fatal(err)
	}
	rg := &rig{sw: r.sw, peer: r.peer, chans: []*channel.Channel{ch}, apps: []*channel.App{app}, ports: []flow.PortID{id}}
	pkt := udp0Pkt(1000).build(t)
	sent := 0
	for range 200 { // 1 s in 5 ms steps, the app keeping its TX ring stocked
		if k := r.sw.Stats().TxPackets; int(k) > sent-20 {
			batch := make([][]byte, 20)
			for i := range batch {
				batch[i] = pkt
			}
			rg.send(t, 0, e.ID(), batch...)
			sent += 20
		}
		clock += int64(5 * time.Millisecond)
		if _, err := r.sw.TxSync(); err != nil {
			t.Fatal(err)
		}
		rg.wire(t)
	}
	got := r.sw.Stats().TxBytes
	// One second at 100 kB/s, plus the burst and one packet of overshoot.
	if max := uint64(rate/8 + burst + 1000); got > max || got < uint64(rate/8)*9/10 {
		t.Errorf("%d bytes in a second, want about %d (at most %d)", got, rate/8, max)
	}
	snap := r.sw.Snapshot()
	if ps := snap.Ports[0].Regulation; ps == nil || ps.Limited == 0 || ps.Rate != rate {
		t.Errorf("port regulation stats %+v", ps)
	}
}

// Adaptive batching: under a high packet rate the switch holds a partial
// batch for up to the level's hold, then delivers it (Service) with
// nothing lost or reordered; at a low rate it delivers at once.
func TestRegulationMitigation(t *testing.T) {
	var clock int64
	now := func() int64 { return clock }
	r := newRegRig(t, 0, flowswitch.RegulationOptions{}, now, []bool{false}, channel.Options{RxSize: 4096})
	p := r.ports[0]
	rg := &rig{sw: r.sw, peer: r.peer, chans: []*channel.Channel{p.ch}, apps: []*channel.App{p.app}, ports: []flow.PortID{p.id}}
	frame := udpFrameFrom(t, netip.AddrPortFrom(remoteIP, 6000), p.sport, "m", 0)
	batch := make([][]byte, 32)
	for i := range batch {
		batch[i] = frame
	}
	delivered := func() int { return len(rg.drain(t, 0)) }
	// Quiet: one frame is delivered at once.
	rg.write(t, frame)
	r.sw.RxOnce()
	if n := delivered(); n != 1 {
		t.Fatalf("a quiet link's frame was held: %d delivered", n)
	}
	// 32 frames every 20 µs: 1.6 Mpps for 60 ms (the level climbs one
	// step per 10 ms sample).
	total := 0
	for range 3000 {
		clock += int64(20 * time.Microsecond)
		rg.write(t, batch...)
		r.sw.RxOnce()
		total += delivered()
	}
	level := r.sw.Stats().Regulation.MitigationLevel
	if level == 0 {
		t.Fatalf("level 0 at 1.6 Mpps")
	}
	// A partial batch is held...
	rg.write(t, batch[:5]...)
	clock += int64(time.Microsecond)
	r.sw.RxOnce()
	if n := delivered(); n != 0 {
		t.Fatalf("%d frames of a partial batch delivered at once at level %d", n, level)
	}
	// ...until its hold passes: Service says when to come back.
	var held time.Duration
	n := 0
	for n == 0 && held <= regulate.MaxHold {
		wait, err := r.sw.Service()
		if err != nil || wait <= 0 || wait > regulate.MaxHold {
			t.Fatalf("Service asks to wait %v (%v) with frames held", wait, err)
		}
		clock += int64(wait)
		held += wait
		r.sw.Service()
		n = delivered()
	}
	if n != 5 {
		t.Fatalf("%d of the 5 held frames delivered after %v", n, held)
	}
	t.Logf("level %d: held %v", level, held)
	if st := r.sw.Stats(); st.Regulation.Held == 0 || st.Delivered != uint64(total+6) {
		t.Errorf("held %d, delivered %d of %d", st.Regulation.Held, st.Delivered, total+6)
	}
}

// With Regulation, a steady flow through the AQM (enqueue, dequeue, write)
// allocates nothing, paced or not.
func TestRegulationNoAllocs(t *testing.T) {
	for _, rate := range []int64{0, 1_000_000_000} {
		var clock int64
		now := func() int64 { return clock }
		r := newRegRig(t, rate, flowswitch.RegulationOptions{NoMitigation: true}, now, []bool{true}, channel.Options{})
		p := r.ports[0]
		pkt := txPkt{proto: packet.ProtoUDP, src: localIP, dst: remoteIP, sport: p.sport, dport: 6000, size: 1000}.build(t)
		id := p.flow.ID()
		bufs := make([]channel.Buf, 32)
		rbufs := make([][]byte, 64)
		for i := range rbufs {
			rbufs[i] = make([]byte, netif.MaxFrameLen(r.peer.MTU(), r.peer.LinkType()))
		}
		sizes := make([]int, 64)
		step := func() {
			for got := 0; got < len(bufs); {
				p.ch.Sync()
				n, err := p.app.Alloc(bufs[got:])
				if n == 0 || err != nil {
					t.Fatalf("alloc %d, %v", n, err)
				}
				got += n
			}
			for i, b := range bufs {
				bufs[i].Data = b.Data[:copy(b.Data, pkt)]
				copy(p.ch.Pool().UserMeta(b.Index), id[:])
			}
			p.app.Send(bufs)
			clock += int64(time.Millisecond) // 125 kB of credit at 1 Gbit/s: the batch goes
			if n, err := r.sw.TxSync(); n != 32 || err != nil {
				t.Fatalf("TxSync = %d, %v", n, err)
			}
			if n, _ := r.peer.Read(rbufs, sizes); n != 32 {
				t.Fatalf("%d frames on the wire (%+v)", n, r.sw.Stats().Regulation)
			}
		}
		for range 5 {
			step()
		}
		if a := testing.AllocsPerRun(100, step); a != 0 {
			t.Errorf("rate %d: %v allocations per batch of 32", rate, a)
		}
	}
}

// Options are checked.
func TestRegulationOptions(t *testing.T) {
	a, _, err := memif.NewPair(memif.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	bad := []flowswitch.Options{
		{Link: a, LinkRate: 1000},
		{Link: a, Regulation: &flowswitch.RegulationOptions{}, TxQueue: &fifoQueue{}},
		{Link: a, Regulation: &flowswitch.RegulationOptions{Queue: regulate.Options{MTU: 1500}}},
		{Link: a, Regulation: &flowswitch.RegulationOptions{Queue: regulate.Options{Target: time.Second, Interval: time.Millisecond}}},
		{Link: a, Regulation: &flowswitch.RegulationOptions{TxBudget: -1}},
		{Link: a, Regulation: &flowswitch.RegulationOptions{}, LinkRate: -5},
		{Link: a, Regulation: &flowswitch.RegulationOptions{}, LinkRate: 4},
		{Link: a, IdleWait: -time.Second},
	}
	for i, o := range bad {
		if _, err := flowswitch.New(o); !errors.Is(err, flowswitch.ErrBadOptions) {
			t.Errorf("options %d: %v", i, err)
		}
	}
	sw, err := flowswitch.New(flowswitch.Options{Link: a})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := channel.New(channel.Options{Name: "opt"})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := sw.AddPortWith(ch, flowswitch.AddPortOptions{Rate: 1000}); !errors.Is(err, flowswitch.ErrBadOptions) {
		t.Errorf("a port rate without Regulation: %v", err)
	}
}
