package flowswitch_test

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
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

func snapFlow(s flowswitch.Snapshot, e *flow.Entry) *flowswitch.FlowStats {
	for i := range s.Flows {
		if s.Flows[i].Token == e.Token() {
			return &s.Flows[i]
		}
	}
	return nil
}
