package flowswitch_test

import (
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/regulate"
)

// Regulation on a synthetic clock, in the datapath's own rounds: what the
// real-time tests (regulation_test.go) would otherwise judge by wall-clock
// figures — the latency a burst adds to another app, the link kept busy
// by apps that honour advisories, fair shares — measured in a time that a
// slow or loaded host cannot stretch. One goroutine plays the apps (the
// real-time tests' senders), the switch (Round, as the nexus runs it) and
// the wire, in steps of simStep; an app reacts to an advisory within a
// step. The switch's pacer is the link. How the real datapath does on real
// time is a performance figure: `skylane bench burst` (its
// rpc-p99-under-bulk, bulk-utilisation and fairness rows).

// simStep is the synthetic time between two rounds: a tenth of a 1514-byte
// frame's time at 10 Mbit/s, fine enough for latencies of a few frames.
const simStep = 100 * time.Microsecond

// simWakeLag is how long an app of the advisory tests takes to act on a
// resume: a late wake-up on a busy host. The queue resumes a flow while
// it still holds more than that of the link's time (AdvisoryPolicy's
// ResumeBacklog, 64 packets: 26 ms of 1014-byte frames at 20 Mbit/s), so
// the link does not run dry meanwhile.
const simWakeLag = 10 * time.Millisecond

// simRig is a regRig on a synthetic clock, with what arrived on the wire.
type simRig struct {
	*regRig
	clock int64 // ns; read by the switch as its Now
	log   flowLog
	wire  uint64 // bytes that arrived
	rbufs [][]byte
	sizes []int
}

func newSimRig(t testing.TB, rate int64, ro flowswitch.RegulationOptions, adv []bool, record ...uint16) *simRig {
	t.Helper()
	r := &simRig{log: newFlowLog(record...)}
	r.regRig = newRegRig(t, rate, ro, func() int64 { return r.clock }, adv, channel.Options{})
	r.rbufs = make([][]byte, 64)
	for i := range r.rbufs {
		r.rbufs[i] = make([]byte, netif.MaxFrameLen(r.peer.MTU(), r.peer.LinkType()))
	}
	r.sizes = make([]int, len(r.rbufs))
	return r
}

// now is the synthetic time, the senders' clock.
func (r *simRig) now() time.Duration { return time.Duration(r.clock) }

// step runs one step: each sender tries once (in order), the clock moves
// on, the switch runs a round and the channels are synced (as the nexus's
// worker does), and the wire is read.
func (r *simRig) step(t testing.TB, ss ...*sender) {
	t.Helper()
	for _, s := range ss {
		if _, err := s.step(r.now()); err != nil {
			t.Fatalf("sender %d: %v", s.p.sport, err)
		}
	}
	r.clock += int64(simStep)
	if _, _, err := r.sw.Round(flowswitch.ReadDevice); err != nil {
		t.Fatalf("Round = %v", err)
	}
	for _, p := range r.ports {
		if err := p.ch.Sync(); err != nil {
			t.Fatalf("channel %d: %v", p.id, err)
		}
	}
	for {
		n, err := r.peer.Read(r.rbufs, r.sizes)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		for i := range n {
			r.log.add(r.rbufs[i][:r.sizes[i]], r.now())
			r.wire += uint64(r.sizes[i])
		}
	}
}

// run steps for d of synthetic time.
func (r *simRig) run(t testing.TB, d time.Duration, ss ...*sender) {
	t.Helper()
	for end := r.clock + int64(d); r.clock < end; {
		r.step(t, ss...)
	}
}

// until steps until cond holds, for at most d of synthetic time (then the
// test fails).
func (r *simRig) until(t testing.TB, d time.Duration, cond func() bool, ss ...*sender) {
	t.Helper()
	for end := r.clock + int64(d); !cond(); {
		if r.clock >= end {
			t.Fatalf("condition not met within %v of synthetic time", d)
		}
		r.step(t, ss...)
	}
}

// utilisation is the share of the link's capacity over d that bytes are.
func utilisation(bytes uint64, d time.Duration, rate int64) float64 {
	return float64(bytes*8) / d.Seconds() / float64(rate)
}

// One app bursting at 10× the link's capacity (raw UDP: no advisories)
// does not change another app's loss (zero) and adds less than the AQM
// target to its latency: the victim's sparse flow is served ahead of the
// bulk (DRR's new flows), and the burst is dropped early, at the queue,
// while the link stays busy.
func TestRegulationBurstIsolationSim(t *testing.T) {
	r := newSimRig(t, testLinkRate, flowswitch.RegulationOptions{}, []bool{false, false}, 5000, 5001)
	victim, burst := r.ports[0], r.ports[1]

	// Idle: the victim alone, 200 packets/s of 200 bytes (a small RPC).
	vs := &sender{p: victim, size: 200, pps: 200, batch: 1}
	r.run(t, 500*time.Millisecond, vs)
	idle := p99(r.log.snapshot(victim.sport).sojourn)
	r.log.reset(victim.sport)

	// Burst: 10× the link in 1500-byte packets, for a second and a half.
	const burstSize, window = 1500, 1500 * time.Millisecond
	bs := &sender{p: burst, size: burstSize, pps: 10 * float64(testLinkRate) / 8 / (burstSize + 14), batch: 32}
	// A capture of the transmit drops sees every packet the AQM drops.
	aqm := newCapture(t, r.sw, capture.Options{Filter: capture.Filter{Points: 1 << capture.DropTx}})
	wire0 := r.wire
	r.run(t, window, vs, bs)
	loaded := r.log.snapshot(victim.sport)
	busy := utilisation(r.wire-wire0, window, testLinkRate)
	offered := utilisation(uint64(bs.sent)*(burstSize+14), window, testLinkRate)
	if offered < 9 {
		t.Fatalf("rig: the burst offered %.1f× the link", offered)
	}
	under, bulk := p99(loaded.sojourn), p99(r.log.snapshot(burst.sport).sojourn)
	target := regulate.DefaultTarget
	t.Logf("victim p99 idle %v, under a %.1f× burst %v (%d samples); the burst's own p99 %v; link %.3f busy",
		idle, offered, under, len(loaded.sojourn), bulk, busy)
	if under > idle+target {
		t.Errorf("victim p99 %v under the burst, idle %v: more than the target %v apart", under, idle, target)
	}
	// The check can fail: a packet queued behind the burst's backlog
	// waits longer than that.
	if bulk <= idle+target {
		t.Errorf("rig: the burst's p99 %v, within the target of the victim's idle %v: no backlog to be isolated from", bulk, idle)
	}
	// The burst's backlog keeps the link busy, and the pacer keeps it
	// within the link's rate (its burst is 2 ms: 0.2% of the window).
	if busy < 0.99 || busy > 1.01 {
		t.Errorf("the link was %.3f busy under the burst, want 1", busy)
	}
	// Every victim packet sent arrives.
	r.until(t, 5*time.Second, func() bool { return r.log.snapshot(victim.sport).packets == uint64(vs.sent) })
	final := r.log.snapshot(victim.sport)
	if final.gaps != 0 || final.reordered != 0 {
		t.Errorf("victim lost %d and reordered %d of %d packets", final.gaps, final.reordered, vs.sent)
	}
	snap := r.sw.Snapshot()
	if rg := snap.Regulation; rg.EarlyDrops+rg.CoDelDrops+rg.OverflowDrops == 0 {
		t.Errorf("a 10× burst was not dropped at the queue: %+v", rg)
	}
	if rg := snap.Regulation; aqm.Matched() != rg.EarlyDrops+rg.CoDelDrops+rg.OverflowDrops {
		t.Errorf("the capture saw %d AQM drops, the queue counted %+v", aqm.Matched(), rg)
	}
	for _, rec := range readCapture(aqm) {
		if rec.point != capture.DropTx || !strings.HasPrefix(rec.reason, "aqm_") || rec.len < burstSize {
			t.Fatalf("captured drop %s %q of %d bytes: want the burst's, dropped by the AQM", rec.point, rec.reason, rec.len)
		}
	}
	if f := snapFlow(snap, victim.flow); f == nil || f.AQMDrops != 0 {
		t.Errorf("the victim's flow at the queue: %+v", f)
	}
}

// A sender that honours advisories, however much faster than the link it
// would go, loses nothing at the queue and is held back, not starved: it
// is resumed before the link runs dry, so the link stays busy until its
// last packet.
func TestRegulationAdvisoryNoLossSim(t *testing.T) {
	const rate, total, size = 20_000_000, 2500, 1000
	r := newSimRig(t, rate, flowswitch.RegulationOptions{}, []bool{true})
	p := r.ports[0]
	s := &sender{p: p, size: size, total: total, honour: true, batch: 16, lag: simWakeLag}
	r.until(t, 5*time.Second, func() bool { return r.log.snapshot(p.sport).packets == total }, s)
	rec := r.log.snapshot(p.sport)
	rg := checkHeldBack(t, r.sw, rec, s)
	// From the first round to the last packet's arrival, less a step:
	// the sender reacts within one.
	util := utilisation(rec.bytes, r.now()-simStep, rate)
	t.Logf("%d packets in %v: %.3f of the link; %d suspends, %d resumes", total, r.now(), util, rg.Suspends, rg.Resumes)
	if util < 0.99 {
		t.Errorf("utilisation %.3f while held back by advisories", util)
	}
}

// Eight bulk flows from eight channels, all honouring advisories, share a
// rate-limited link fairly (Jain's index of their throughput ≥ 0.95) and
// keep it busy, losing nothing at the queue.
func TestRegulationFairnessSim(t *testing.T) {
	const rate = 20_000_000
	adv := make([]bool, 8)
	for i := range adv {
		adv[i] = true
	}
	r := newSimRig(t, rate, flowswitch.RegulationOptions{}, adv)
	var ss []*sender
	for _, p := range r.ports {
		ss = append(ss, &sender{p: p, size: 1200, honour: true, batch: 16, lag: simWakeLag})
	}
	r.run(t, 500*time.Millisecond, ss...) // warm-up: every flow has a queue
	before := make([]uint64, len(r.ports))
	for i, p := range r.ports {
		before[i] = r.log.snapshot(p.sport).bytes
	}
	const window = 1500 * time.Millisecond
	r.run(t, window, ss...)
	got := make([]uint64, len(r.ports))
	var sum uint64
	for i, p := range r.ports {
		got[i] = r.log.snapshot(p.sport).bytes - before[i]
		sum += got[i]
	}
	j := regulate.Jain(got)
	util := utilisation(sum, window, rate)
	t.Logf("bytes per flow %v: Jain %.3f, utilisation %.3f", got, j, util)
	if j < 0.95 {
		t.Errorf("Jain's index %.3f < 0.95: %v", j, got)
	}
	if util < 0.99 || util > 1.01 {
		t.Errorf("utilisation %.3f, want 1", util)
	}
	if rg := r.sw.Snapshot().Regulation; rg.OverflowDrops+rg.CoDelDrops+rg.EarlyDrops != 0 {
		t.Errorf("advisory flows lost packets at the queue: %+v", rg)
	}
}
