package flowswitch_test

import (
	"errors"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/regulate"
)

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
