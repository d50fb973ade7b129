package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/skylane/skylane/bench"
	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/pool"
)

// demoReport is everything the demo measured, printed as text or JSON.
type demoReport struct {
	Flowswitch switchReport `json:"flowswitch"`
	HTTPS      httpsReport  `json:"https"`
	Burst      bench.Report `json:"burst"`
	Pools      poolReport   `json:"pools"`
}

// demoBurstTrial is how long each burst trial measures (after its
// warm-up of 500 ms): a thousand regulated RPCs, tens of advisory cycles,
// and a few of the FIFO's RPCs, which take a quarter of a second each
// (with none, the FIFO's p99 is reported as above the window, a lower
// bound). Its four trials take about 8 s of the demo's 15.
const demoBurstTrial = 1500 * time.Millisecond

// demoHTTPSBytes is the body the HTTPS client fetches: large enough that
// TCP reaches full windows and the switch forms super packets, small enough
// to take a few tens of milliseconds.
const demoHTTPSBytes = 4 << 20

// poolReport is the pools-and-channels part of the demo.
type poolReport struct {
	Packets          int     `json:"packets"`
	Mpps             float64 `json:"mpps_each_way"`
	Notifications    uint64  `json:"notifications"`
	BurstSegments    int     `json:"burst_segments"`
	BurstBuffers     int     `json:"burst_buffers"`
	BurstKiB         int     `json:"burst_kib"`
	SegmentsReleased uint64  `json:"segments_released"`
	KiBBefore        int64   `json:"kib_before_reap"`
	KiBAfter         int64   `json:"kib_after_reap"`
	SegmentsLeft     int     `json:"segments_left"`
	AppMapped        int     `json:"app_mapped_segments"`
	BadApp           string  `json:"bad_app"`
	GoodAppAfter     string  `json:"good_app_after"`
}

// runDemo shows the flowswitch (flow-based batching on receive,
// anti-spoofing on transmit) and then the packet memory and channels, in one
// process, no root.
func runDemo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	packets := fs.Int("packets", 200_000, "packets each way for the well-behaved app (pools section)")
	idle := fs.Duration("idle", time.Second, "pool idle timeout before segments go back to the OS")
	burst := fs.Duration("burst", demoBurstTrial, "measured window of each of the burst section's four trials (after a warm-up of up to 500 ms)")
	asJSON := fs.Bool("json", false, "print the figures as one JSON object on stdout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rep, err := buildDemo(*packets, *idle, *burst)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return printDemo(os.Stdout, rep)
}

// buildDemo runs every part of the demo and checks what they must show;
// burst is each burst trial's measured window.
func buildDemo(packets int, idle, burst time.Duration) (*demoReport, error) {
	var rep demoReport
	var err error
	fmt.Fprintln(os.Stderr, "flowswitch: generator -> memif wire -> switch -> app-A, app-B, and back...")
	if rep.Flowswitch, err = demoSwitch(); err != nil {
		return nil, fmt.Errorf("demo flowswitch: %w", err)
	}
	if n := rep.Flowswitch.Tx.SpoofedOnWire; n != 0 {
		return &rep, fmt.Errorf("demo: %d spoofed packets reached the wire", n)
	}
	fmt.Fprintln(os.Stderr, "https: server in a user-space stack on host A, client on host B, two nexuses on a memif wire...")
	if rep.HTTPS, err = demoHTTPS(demoHTTPSBytes); err != nil {
		return &rep, fmt.Errorf("demo https: %w", err)
	}
	if h := rep.HTTPS; h.Status != 200 || !h.DigestOK || !h.IPv6OK || h.TxDrops != 0 {
		return &rep, fmt.Errorf("demo https: status %d, digest ok %v, IPv6 ok %v, %d packets dropped by the transmit checks", h.Status, h.DigestOK, h.IPv6OK, h.TxDrops)
	}
	fmt.Fprintln(os.Stderr, "burst: 8 bulk apps and one RPC app on a 100 Mbit/s wire, regulated then a plain FIFO, then regulated with an unresponsive UDP blaster...")
	if rep.Burst, err = demoBurst(burst); err != nil {
		return &rep, fmt.Errorf("demo burst: %w", err)
	}
	if rep.Pools, err = demoPools(packets, idle); err != nil {
		return &rep, err
	}
	return &rep, nil
}

// demoBurst runs bench's burst scenario once, d per trial: the same rows
// and extras (advisory suspends and resumes, AQM drops, the FIFO's tail
// drops) as `skylane bench burst`.
func demoBurst(d time.Duration) (bench.Report, error) {
	for _, sc := range bench.Scenarios() {
		if sc.Name == "burst" {
			return sc.Run(bench.Config{Duration: d, Rounds: 1})
		}
	}
	return bench.Report{}, errors.New("the bench has no burst scenario: was it renamed?")
}

// demoPools shows the packet memory and channels at work: two apps with
// their own pools, a burst that grows one pool, the reaper giving the memory
// back, and a misbehaving app losing only its own channel.
func demoPools(packets int, idle time.Duration) (poolReport, error) {
	var rep poolReport
	popts := pool.Options{IdleTimeout: idle}
	good, err := channel.New(channel.Options{Name: "app-good", Pool: popts})
	if err != nil {
		return rep, err
	}
	defer good.Close()
	bad, err := channel.New(channel.Options{Name: "app-bad", Pool: popts})
	if err != nil {
		return rep, err
	}
	defer bad.Close()
	ga, err := good.AttachLocal()
	if err != nil {
		return rep, err
	}
	defer ga.Close()
	ba, err := bad.AttachLocal()
	if err != nil {
		return rep, err
	}
	defer ba.Close()

	fmt.Fprintf(os.Stderr, "moving %d packets each way through app-good's channel...\n", packets)
	start := time.Now()
	bufs := make([]channel.Buf, 32)
	var up, down int
	for up < packets || down < packets {
		good.Sync()
		n, err := ga.Alloc(bufs[:min(32, packets-up)])
		if err != nil {
			return rep, err
		}
		for i := range n {
			bufs[i].Data = bufs[i].Data[:64]
		}
		k, _ := ga.Send(bufs[:n])
		up += k
		m, err := good.TakeTX(bufs)
		if err != nil {
			return rep, err
		}
		// Echo what the app sent back to it, as a nexus would forward it.
		down += good.Deliver(bufs[:m])
		r, _ := ga.Receive(bufs)
		ga.Free(bufs[:r])
	}
	elapsed := time.Since(start)

	fmt.Fprintln(os.Stderr, "app-good holds 3000 buffers at once (a burst)...")
	held := make([]channel.Buf, 0, 3000)
	for len(held) < cap(held) {
		good.Sync()
		n, err := ga.Alloc(bufs[:min(32, cap(held)-len(held))])
		if err != nil {
			return rep, err
		}
		for i := range n {
			clear(bufs[i].Data) // really use the memory
		}
		held = append(held, bufs[:n]...)
	}
	burst := good.Pool().Stats()
	for len(held) > 0 {
		k, _ := ga.Free(held[:min(32, len(held))])
		held = held[k:]
		good.Sync()
	}
	fmt.Fprintf(os.Stderr, "...released; waiting %v for the reaper\n", idle)
	before, _ := good.Pool().AllocatedBytes()
	for t0 := time.Now(); time.Since(t0) < idle+1500*time.Millisecond; time.Sleep(250 * time.Millisecond) {
		good.Reap(time.Now())
	}
	// The app unmaps what the nexus released, as its event ring tells it.
	evs := make([]channel.Event, 32)
	for {
		good.Sync()
		if n, err := ga.Events(evs); err != nil || n == 0 {
			break
		}
	}
	after, _ := good.Pool().AllocatedBytes()
	reaped := good.Pool().Stats()

	fmt.Fprintln(os.Stderr, "app-bad frees the same buffers twice...")
	bad.Sync()
	n, _ := ba.Alloc(bufs[:4])
	ba.Free(bufs[:n])
	ba.Free(bufs[:n])
	bad.Sync()
	badErr := ba.Err()
	// app-good is untouched.
	good.Sync()
	n, goodErr := ga.Alloc(bufs[:4])
	if goodErr == nil {
		_, goodErr = ga.Send(bufs[:n])
	}

	c := good.Counters()
	rep = poolReport{
		Packets: packets, Mpps: float64(packets) / elapsed.Seconds() / 1e6, Notifications: c.Notifications,
		BurstSegments: burst.Segments, BurstBuffers: burst.BuffersTotal, BurstKiB: burst.Segments * good.Pool().SegmentSize() / 1024,
		SegmentsReleased: reaped.Releases, KiBBefore: int64(before / 1024), KiBAfter: int64(after / 1024),
		SegmentsLeft: reaped.Segments, AppMapped: ga.MappedSegments(), BadApp: fmt.Sprint(badErr), GoodAppAfter: okOr(goodErr),
	}
	if badErr == nil || goodErr != nil || !errors.Is(badErr, channel.ErrDefunct) {
		return rep, errors.New("demo: the channels did not behave as expected")
	}
	return rep, nil
}

// printDemo prints the report for a reader who has not read the code.
func printDemo(out io.Writer, rep *demoReport) error {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	f := rep.Flowswitch
	fmt.Fprintf(w, "Skylane demo (in-memory, one process, no root)\n\n")
	fmt.Fprintf(w, "FLOWSWITCH\ttraffic generator <-> memif wire <-> flowswitch <-> apps; local address %v\n", demoLocal)
	var flows, apps []string
	for _, a := range f.Apps {
		flows = append(flows, fmt.Sprintf("%s %d %s", a.Name, a.Flows, a.Proto))
		apps = append(apps, fmt.Sprintf("%s %d", a.Name, a.Delivered))
	}
	fmt.Fprintf(w, "flows registered\t%s (5-tuples, peers in 198.19.0.0/16)\n", strings.Join(flows, ", "))
	fmt.Fprintf(w, "receive\t%d frames read in %d input batches, many flows interleaved\n", f.FramesRead, f.InputBatches)
	fmt.Fprintf(w, "  delivered\t%d packets in %d ring deliveries (%d wake-up notifications)\n", f.Delivered, f.Deliveries, f.Notifications)
	fmt.Fprintf(w, "  batching\t%.1f packets per delivery, %.1f per flow batch: one delivery and at most one wake-up per app per input batch\n", f.PacketsPerDelivery, f.PacketsPerFlowBatch)
	fmt.Fprintf(w, "  per app\t%s packets delivered\n", strings.Join(apps, ", "))
	fmt.Fprintf(w, "  TCP merging\t%d in-order segments merged into %d super packets\n", f.Merged, f.SuperPackets)
	fmt.Fprintf(w, "  no flow\t%d of %d dropped (unregistered ports, ARP)\n", f.NoFlowDropped, f.NoFlowSent)
	var mal uint64
	for _, n := range f.MalformedDropped {
		mal += n
	}
	fmt.Fprintf(w, "  malformed\t%d of %d dropped: %s\n", mal, f.MalformedSent, countList(f.MalformedDropped))
	t := f.Tx
	fmt.Fprintf(w, "transmit\tapps sent %d packets: %d on the wire, %d dropped by the switch's checks\n", t.Sent, t.OnWire, t.DroppedTotal)
	for _, a := range t.Attempts {
		note := ""
		if a.Kind == "SYN flood" {
			note = " (the first 20 SYNs are the allowed burst)"
		}
		fmt.Fprintf(w, "  %s\t%d sent, %d on the wire, dropped: %s%s\n", a.Kind, a.Sent, a.OnWire, countList(a.DroppedBy), note)
	}
	fmt.Fprintf(w, "  verified at the generator\t%d spoofed packets reached the wire (%d frames received and checked)\n\n", t.SpoofedOnWire, t.WireFrames)

	h := rep.HTTPS
	fmt.Fprintf(w, "USER-SPACE HTTPS\tnet/http + crypto/tls on gVisor netstack, two stacks, two nexuses, memif wire at MTU 1500\n")
	fmt.Fprintf(w, "request\tGET %s: %d, %s over %s, %d KiB in %v (%.1f Gbit/s), SHA-256 checked: %v; the same over IPv6: %v\n",
		h.URL, h.Status, h.Proto, h.TLSVersion, h.Bytes>>10, h.Elapsed.Round(time.Microsecond), h.Gbps, h.DigestOK, h.IPv6OK)
	fmt.Fprintf(w, "flows\t%d connection flows registered by the server's stack before its SYN-ACKs left; %d packets dropped by the transmit checks\n", h.ServerFlowsAuto, h.TxDrops)
	fmt.Fprintf(w, "server transmit\t%d packets on its TX ring, %d of them netstack GSO super packets handed down whole; its nexus cut %d into %d MTU segments right before the wire\n",
		h.ServerTxPackets, h.ServerGSOPackets, h.ServerCut, h.ServerSegments)
	fmt.Fprintf(w, "client receive\t%d frames in %d input batches (%.1f per batch); %d segments merged into %d super packets: netstack saw %d packets\n\n",
		h.ClientFrames, h.ClientBatches, ratio(h.ClientFrames, h.ClientBatches), h.ClientMerged, h.ClientSuperPackets, h.ClientRxPackets)

	fmt.Fprintf(w, "BURST\t8 bulk apps saturate a 100 Mbit/s wire while one app does 64-byte request/response; regulation vs a plain FIFO of 2048 frames\n")
	for _, r := range rep.Burst.Results {
		v, b, ratio := r.Figures() // ">2000.00": too long to measure in the window, a lower bound
		fmt.Fprintf(w, "  %s\t%s %s regulated, %s with the FIFO (ratio %s, above 1: regulation is better)\n", r.Name, v, r.Unit, b, ratio)
	}
	if len(rep.Burst.Results) > 0 {
		x := rep.Burst.Results[0].Extra
		fmt.Fprintf(w, "  round trips\t%v regulated, %v with the FIFO (%v given up after %v), %v with the RPC app alone\n",
			x["round_trips"], x["baseline_round_trips"], x["baseline_lost"], bench.BurstRPCWait, x["idle_round_trips"])
		fmt.Fprintf(w, "  advisories\t%v suspends and %v resumes told the bulk apps to pause instead of losing packets\n", x["advisory_suspends"], x["advisory_resumes"])
		fmt.Fprintf(w, "  drops at the nexus queue\tCoDel %v, overflow %v, early %v; the FIFO tail-dropped %v frames\n", x["aqm_codel_drops"], x["aqm_overflow_drops"], x["aqm_early_drops"], x["fifo_tail_drops"])
		fmt.Fprintf(w, "  unresponsive app\tregulated again with one more app blasting raw UDP at %v Mbit/s with no advisories: %v sent, %v delivered, %v lost;"+
			" the AQM dropped it (early %v, CoDel %v, overflow %v) while the 8 advisory apps lost %v at the queue (%v suspends, %v resumes); RPC p99 %v ms (goal %v)\n\n",
			x["unresp_rate_mbit_s"], x["unresp_sent"], x["unresp_delivered"], x["unresp_dropped"],
			x["unresp_aqm_early_drops"], x["unresp_aqm_codel_drops"], x["unresp_aqm_overflow_drops"], x["unresp_bulk_aqm_drops"],
			x["unresp_advisory_suspends"], x["unresp_advisory_resumes"], x["unresp_rpc_p99_ms"], x["unresp_rpc_goal_ms"])
	}

	p := rep.Pools
	fmt.Fprintf(w, "POOLS AND CHANNELS\n")
	fmt.Fprintf(w, "app-good\tsent and received %d packets each way (%.1f Mpps), %d notifications (a busy app needs none)\n", p.Packets, p.Mpps, p.Notifications)
	fmt.Fprintf(w, "pool\ta burst grew it to %d segments (%d buffers, %d KiB)\n", p.BurstSegments, p.BurstBuffers, p.BurstKiB)
	fmt.Fprintf(w, "\treaper returned %d segments to the OS: %d KiB -> %d KiB held, %d segments left, app maps %d\n", p.SegmentsReleased, p.KiBBefore, p.KiBAfter, p.SegmentsLeft, p.AppMapped)
	fmt.Fprintf(w, "app-bad\t%s\n", p.BadApp)
	fmt.Fprintf(w, "app-good after that\t%s\n", p.GoodAppAfter)
	if err := w.Flush(); err != nil {
		return err
	}
	// The switch's own counters, as an operator sees them (all of them,
	// with every flow, in --json).
	fmt.Fprintf(out, "\nFLOWSWITCH COUNTERS (first %d of %d flows; --json has all)\n", demoStatsFlows, len(f.Stats.Flows))
	return f.Stats.WriteTable(out, demoStatsFlows)
}

// demoStatsFlows is how many flows the text report lists: enough to show
// the columns, few enough to keep the report on one screen.
const demoStatsFlows = 4

// countList prints counters as "name n, name n" in name order, or "none".
func countList(m map[string]uint64) string {
	var parts []string
	for k, v := range m {
		if v > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, v))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func okOr(err error) string {
	if err == nil {
		return "still running"
	}
	return err.Error()
}
