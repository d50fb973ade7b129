package bench

import (
	"cmp"
	"encoding/hex"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/regulate"
)

// The burst scenario (docs/design.md §7): a memif wire limited to
// burstRate carries eight bulk flows, each from its own app (channel),
// and one small request/response flow (RPC) from another app; the peer
// end counts the bulk bytes per flow and answers each request at once.
// Each round runs four trials, each on a fresh wire and nexus.Nexus (whose
// worker runs the datapath, as in `skylane serve`):
//
//   - ours: the switch with Regulation (fq_codel AQM of 2048 packets,
//     flow advisories, round-robin TX, paced at the link rate);
//   - baseline: the same switch without it, so the device's own FIFO of
//     the same length (the memif queue, 2048 frames) is the transmit
//     queue, tail-dropping when full;
//   - idle: ours with the RPC flow alone, for its idle latency;
//   - unresponsive: ours plus one app that ignores advisories: its port
//     is opened without them (nexus.PortOptions.Advisories false) and it
//     blasts raw UDP at burstBlastRate (twice the link's rate) whatever
//     the switch says, as raw UDP without a stack does. The AQM can only
//     drop its packets (early, or CoDel), never suspend it.
//
// The unresponsive app runs in its own regulated trial only, not in the
// ours and FIFO trials the rows compare: the rows keep their meaning and
// stay comparable with earlier figures. With it present, DRR gives it a
// fair share of the link (one flow of nine), which would lower
// bulk-utilisation by design rather than by any fault of regulation, and
// under the FIFO its share would depend on the order the switch serves
// the ports, not on anything the rows measure. Its trial's figures are
// extras (unresp_*): the blaster's packets sent, delivered and dropped,
// the AQM's drops (early, CoDel, overflow), the advisories, the eight
// advisory flows' own AQM drops (zero: they are suspended instead) and
// the RPC's p99 beside it (goal as for the row: idle p99 + 2 × target).
//
// The bulk apps are raw channel senders that honour advisories: they read
// their flow's advisory entry before each batch and send nothing while it
// is SUSPENDED, sleeping until the resume's event (netstack's TCP, which
// honours them in the stack, comes with the stack's bench; under the FIFO
// nothing is ever suspended, so they send as fast as their TX ring
// drains). The RPC app sends 64-byte requests in a closed loop, resending
// a request unanswered for burstRPCRetry as TCP would, and sleeps on its
// RX ring for each answer.
//
// Rows: rpc-p99-under-bulk (the RPC's p99 round trip in ms while the bulk
// flows saturate the link; lower is better, ratio = FIFO / ours; a request
// given up as lost counts as longer than burstRPCWait, and a trial kind
// whose requests went unanswered is a lower bound, not an error:
// burstP99),
// bulk-utilisation (the bulk flows' share of the link, 0–1, ratio = ours /
// FIFO) and fairness/flows=8 (Jain's index of the eight bulk flows'
// throughput). Extras: the AQM's drops (CoDel, overflow, early), the
// advisory suspends and resumes published, the FIFO's tail drops.
//
// With Config.Dev (`skylane bench burst --dev`, root) the same trials run
// on a veth pair instead, the far end the kernel's own stack in another
// namespace, the rows prefixed "veth/" (burstveth.go: the wire, and how
// the FIFO trial gets the same rate and queue length there). A burstWire
// says where the trials run; everything else is shared.
const (
	burstScenario  = "burst"
	burstRowRPC    = "rpc-p99-under-bulk"
	burstRowUtil   = "bulk-utilisation"
	burstRowFair   = "fairness/flows=8"
	burstBaseName  = "plain FIFO transmit queue of 2048 frames (regulation off)"
	burstRate      = 100_000_000 // bits/s on the wire
	burstQueue     = regulate.DefaultLimit
	burstBulkFlows = 8
	burstBulkSize  = 1500 // IP bytes: full frames
	burstRPCSize   = 64
	burstRPCWait   = 2 * time.Second        // a request unanswered this long is lost
	burstRPCRetry  = 200 * time.Millisecond // resent this often until answered (TCP's minimum RTO)
	burstPoll      = 50 * time.Microsecond  // the RPC app's RX poll
	burstFullWait  = 200 * time.Microsecond // a bulk app whose TX ring is full tries again
	burstEthLen    = 14
	burstBulkPort  = 9999 // remote port of the bulk flows
	burstRPCPort   = 7777 // remote port of the RPC flow
	burstRPCLocal  = 7000
	burstBulkLocal = 9000 // + flow index
	burstBlastPort = 5555 // remote port of the unresponsive app's flow
	burstBlastLoc  = 5000
	burstBlastRate = 2 * burstRate // bits/s of IP bytes the unresponsive app sends
	burstBlastMax  = 64            // packets it may fall behind its rate before it gives them up
)

var (
	burstSrcMAC = [6]byte{0x02, 0, 0, 0, 0, 0x11}
	burstDstMAC = [6]byte{0x02, 0, 0, 0, 0, 0x22}
	burstLocal  = netip.MustParseAddr("198.18.0.1")
	burstRemote = netip.MustParseAddr("198.19.0.2")
)

// burstTrial is what one trial measured over its window.
type burstTrial struct {
	rtts    []time.Duration
	lost    int
	bytes   [burstBulkFlows]uint64
	elapsed time.Duration
	snap    flowswitch.Snapshot
	dev     netif.Stats // the switch's end of the wire
	// fifoDrops are the FIFO's tail drops: the memif queue's (dev's
	// TxDrops), or the burstFIFO's and the device's.
	fifoDrops uint64

	bulkAQMDrops uint64 // the bulk (advisory) flows' CoDel and overflow drops, per the flow table
	blastSent    uint64 // the unresponsive app's packets sent and received by the peer, whole trial
	blastRecv    uint64
}

func (t *burstTrial) utilisation() float64 {
	var sum uint64
	for _, b := range t.bytes {
		sum += b
	}
	return float64(sum*8) / t.elapsed.Seconds() / burstRate
}

func (t *burstTrial) jain() float64 { return regulate.Jain(t.bytes[:]) }

// runBurstTrial builds a fresh rig, lets it settle for warmup, then
// measures for d.
func runBurstTrial(w *burstWire, regulated, bulk, blaster bool, warmup, d time.Duration) (burstTrial, error) {
	r, err := newBurstRig(w, regulated, blaster)
	if err != nil {
		return burstTrial{}, err
	}
	defer r.close()
	r.start(bulk)
	time.Sleep(warmup) // the queues fill: the measured window is the steady state
	var before [burstBulkFlows]uint64
	for i := range before {
		before[i] = r.bulkBytes[i].Load()
	}
	r.mu.Lock()
	from, lost0 := len(r.rtts), r.rpcLost
	r.mu.Unlock()
	t0 := time.Now()
	time.Sleep(d) // the measured window
	var tr burstTrial
	for i := range tr.bytes {
		tr.bytes[i] = r.bulkBytes[i].Load() - before[i]
	}
	tr.elapsed = time.Since(t0)
	r.mu.Lock()
	tr.rtts, tr.lost = slices.Clone(r.rtts[from:]), r.rpcLost-lost0
	r.mu.Unlock()
	if err := r.halt(); err != nil {
		return tr, err
	}
	if tr.snap, err = r.nx.Snapshot(); err != nil {
		return tr, err
	}
	st, err := r.nx.Stats()
	if err != nil {
		return tr, err
	}
	tr.dev = st.Link
	tr.fifoDrops = tr.dev.TxDrops
	// The FIFO is the worker's: read once the worker is gone.
	if err := r.close(); err != nil {
		return tr, err
	}
	if r.fifo != nil {
		tr.fifoDrops += r.fifo.drops
	}
	bulkFlows := map[string]bool{}
	for _, a := range r.bulk {
		bulkFlows[hex.EncodeToString(a.flow.ID[:])] = true
	}
	for _, f := range tr.snap.Flows {
		if bulkFlows[f.ID] {
			tr.bulkAQMDrops += f.AQMDrops
		}
	}
	tr.blastSent, tr.blastRecv = r.blastSent.Load(), r.blastRecv.Load()
	return tr, nil
}

// burstLatency is the p99 round trip of a kind of trial, in ms, or a
// lower bound of it (bound BoundLower).
type burstLatency struct {
	ms    float64
	bound string
}

// burstP99 returns the p99 round trip of the trials ts, pooled. A request
// given up as lost (unanswered for burstRPCWait) is a round trip above
// burstRPCWait: when the p99 falls on one, it is known only to be above
// burstRPCWait. A window in which no request was answered nor lost is a
// result too, not an error: the RPC loop is closed, so one request was in
// flight for the whole window (waiting for a buffer, in the queue, or
// resent), and the p99 is above the window's length (the shortest, if
// several). So a FIFO too slow to answer in a short window still has a
// figure, marked as a bound.
func burstP99(ts []burstTrial) burstLatency {
	var rtts []time.Duration
	lost := 0
	window := time.Duration(0)
	for i, t := range ts {
		rtts = append(rtts, t.rtts...)
		lost += t.lost
		if i == 0 || t.elapsed < window {
			window = t.elapsed
		}
	}
	n := len(rtts) + lost
	if n == 0 {
		return burstLatency{ms: float64(window) / 1e6, bound: BoundLower}
	}
	slices.Sort(rtts)
	i := min(n*99/100, n-1)
	if i >= len(rtts) { // a lost one: they sort after every answer
		return burstLatency{ms: float64(burstRPCWait) / 1e6, bound: BoundLower}
	}
	return burstLatency{ms: float64(rtts[i]) / 1e6}
}

func burstRound2(x float64) float64 { return float64(int64(x*100+0.5)) / 100 }

func runBurst(cfg Config) (Report, error) {
	if cfg.Dev {
		return runBurstDev(cfg)
	}
	if cfg.Driver != "" {
		return Report{}, fmt.Errorf("burst: driver %q is for the veth rows: add --dev", cfg.Driver)
	}
	w := memifBurstWire()
	return runBurstOn(cfg, &w)
}

// burstWanted reports whether cfg wants any of w's rows.
func burstWanted(cfg Config, w *burstWire) bool {
	return cfg.wants(w.prefix+burstRowRPC) || cfg.wants(w.prefix+burstRowUtil) || cfg.wants(w.prefix+burstRowFair)
}

// runBurstOn runs the scenario's trials on w and makes its rows.
func runBurstOn(cfg Config, w *burstWire) (Report, error) {
	rep := Report{Scenario: burstScenario, Machine: Machine()}
	if !burstWanted(cfg, w) {
		return rep, nil
	}
	rounds := max(cfg.Rounds, 1)
	d := cfg.Duration / time.Duration(rounds)
	if d <= 0 {
		return rep, fmt.Errorf("burst: duration %v too short", cfg.Duration)
	}
	// Long enough for the FIFO to fill (2048 frames at 100 Mbit/s take
	// 250 ms) and the advisories to settle.
	warmup := min(max(d/2, 100*time.Millisecond), 500*time.Millisecond)
	var ours, base, idle, mixed []burstTrial
	for i := range rounds {
		if err := cfg.roundStart("burst "+cmp.Or(strings.TrimSuffix(w.prefix, "/"), "memif"), i, rounds); err != nil {
			return rep, err
		}
		for _, t := range []struct {
			regulated, bulk, blast bool
			into                   *[]burstTrial
			name                   string
		}{{true, true, false, &ours, "regulated"}, {false, true, false, &base, "fifo"}, {true, false, false, &idle, "idle"},
			{true, true, true, &mixed, "unresponsive"}} {
			tr, err := runBurstTrial(w, t.regulated, t.bulk, t.blast, warmup, d)
			if err != nil {
				return rep, fmt.Errorf("burst %s trial: %w", t.name, err)
			}
			*t.into = append(*t.into, tr)
		}
	}
	count := func(ts []burstTrial) (answered, lost int) {
		for _, t := range ts {
			answered += len(t.rtts)
			lost += t.lost
		}
		return answered, lost
	}
	oN, oLost := count(ours)
	bN, bLost := count(base)
	iN, _ := count(idle)
	_, mLost := count(mixed)
	med := func(ts []burstTrial, f func(*burstTrial) float64) float64 {
		v := make([]float64, len(ts))
		for i := range ts {
			v[i] = f(&ts[i])
		}
		return median(v)
	}
	// The AQM's and the FIFO's drops and the advisories, summed over the
	// regulated trials (FIFO trials for the device drops).
	var codel, overflow, early, susp, resume, backp, fifoDrops, bulkDrops uint64
	for _, t := range ours {
		bulkDrops += t.bulkAQMDrops
		if rg := t.snap.Regulation; rg != nil {
			codel += rg.CoDelDrops
			overflow += rg.OverflowDrops
			early += rg.EarlyDrops
			susp += rg.Suspends
			resume += rg.Resumes
			backp += rg.Backpressured
		}
	}
	for _, t := range base {
		fifoDrops += t.fifoDrops
	}
	// The unresponsive trials: the same sums, and the blaster's packets.
	var mCodel, mOverflow, mEarly, mSusp, mResume, mBulkDrops, bSent, bRecv uint64
	for _, t := range mixed {
		if rg := t.snap.Regulation; rg != nil {
			mCodel += rg.CoDelDrops
			mOverflow += rg.OverflowDrops
			mEarly += rg.EarlyDrops
			mSusp += rg.Suspends
			mResume += rg.Resumes
		}
		mBulkDrops += t.bulkAQMDrops
		bSent += t.blastSent
		bRecv += t.blastRecv
	}
	target := float64(regulate.DefaultTarget) / 1e6
	idleP99, mP99 := burstP99(idle), burstP99(mixed)
	extra := func() map[string]any {
		x := map[string]any{
			"bulk_aqm_drops":         bulkDrops,
			"unresp_rate_mbit_s":     burstBlastRate / 1e6,
			"unresp_sent":            bSent,
			"unresp_delivered":       bRecv,
			"unresp_dropped":         bSent - min(bRecv, bSent), // sent − delivered: the AQM's drops plus the few in flight at the end
			"unresp_aqm_codel_drops": mCodel, "unresp_aqm_overflow_drops": mOverflow, "unresp_aqm_early_drops": mEarly,
			"unresp_advisory_suspends": mSusp, "unresp_advisory_resumes": mResume,
			"unresp_bulk_aqm_drops":   mBulkDrops,
			"unresp_rpc_p99_ms":       burstRound2(mP99.ms),
			"unresp_rpc_goal_ms":      burstRound2(idleP99.ms + 2*target),
			"unresp_rpc_lost":         mLost,
			"unresp_bulk_utilisation": burstRound2(med(mixed, (*burstTrial).utilisation)),
			"unresp_fairness":         burstRound2(med(mixed, (*burstTrial).jain)),

			"aqm_codel_drops": codel, "aqm_overflow_drops": overflow, "aqm_early_drops": early,
			"advisory_suspends": susp, "advisory_resumes": resume, "tx_backpressured": backp,
			"fifo_tail_drops": fifoDrops, "link_mbit_s": burstRate / 1e6, "bulk_flows": burstBulkFlows,
			"bulk_apps": "raw channel senders honouring advisories (netstack TCP: the stack's bench)",
		}
		// A p99 too long to measure is a lower bound (burstP99), and so
		// is a goal made from one.
		if mP99.bound != "" {
			x["unresp_rpc_p99_bound"] = mP99.bound
		}
		if idleP99.bound != "" {
			x["unresp_rpc_goal_bound"] = idleP99.bound
		}
		maps.Copy(x, w.extra)
		return x
	}
	if cfg.wants(w.prefix + burstRowRPC) {
		o, b := burstP99(ours), burstP99(base)
		x := extra()
		x["idle_p99_ms"], x["target_ms"] = burstRound2(idleP99.ms), target
		x["goal_ms"] = burstRound2(idleP99.ms + 2*target) // the row's goal: at most idle p99 + 2 × target
		if idleP99.bound != "" {
			x["idle_p99_bound"], x["goal_bound"] = idleP99.bound, idleP99.bound
		}
		x["round_trips"], x["baseline_round_trips"], x["idle_round_trips"] = oN, bN, iN
		x["lost"], x["baseline_lost"] = oLost, bLost
		r := Latency(w.prefix+burstRowRPC, "ms (p99)", burstRound2(o.ms), o.bound, w.baseName, burstRound2(b.ms), b.bound)
		r.Extra = x
		rep.Results = append(rep.Results, r)
	}
	if cfg.wants(w.prefix + burstRowUtil) {
		o := med(ours, (*burstTrial).utilisation)
		b := med(base, (*burstTrial).utilisation)
		r := Throughput(w.prefix+burstRowUtil, "fraction of the link", o, w.baseName, b)
		r.Extra = extra()
		rep.Results = append(rep.Results, r)
	}
	if cfg.wants(w.prefix + burstRowFair) {
		o := med(ours, (*burstTrial).jain)
		b := med(base, (*burstTrial).jain)
		r := Throughput(w.prefix+burstRowFair, "Jain's index", o, w.baseName, b)
		x := extra()
		x["bulk_bytes_per_flow"] = ours[len(ours)/2].bytes
		r.Extra = x
		rep.Results = append(rep.Results, r)
	}
	return rep, nil
}

// BurstRPCWait is how long the burst scenario's RPC app waits for an answer
// before it gives the request up as lost.
const BurstRPCWait = burstRPCWait
