package bench

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/internal/syscalls"
	"github.com/skylane/skylane/ring"
)

// The channel scenario's rows (docs/benchmarks.md).
var channelRows = []struct {
	name        string
	batch, size int
	kind        string // goroutines, processes, slots
}{
	{"goroutines/batch=1/size=64", 1, 64, "goroutines"},
	{"goroutines/batch=32/size=64", 32, 64, "goroutines"},
	{"goroutines/batch=256/size=64", 256, 64, "goroutines"},
	{"goroutines/batch=32/size=1500", 32, 1500, "goroutines"},
	{"processes/batch=32/size=64", 32, 64, "processes"},
	{"slots/batch=32", 32, 0, "slots"},
}

// The processes row is checked against the goroutines row of the same
// size and batch, measured beside it in the same rounds: crossing a
// process boundary must cost the channel no more than a fifth.
const (
	refRow          = "goroutines/batch=32/size=64"
	procRow         = "processes/batch=32/size=64"
	minVsGoroutines = 0.8
	goChanName      = "Go buffered chan (alloc/free through a chan too)"
	altsPerRound    = 6
)

func runChannel(cfg Config) (Report, error) {
	rep := Report{Scenario: "channel", Machine: Machine()}
	for _, row := range channelRows {
		switch {
		case row.name == refRow && cfg.wants(procRow):
			continue // measured beside the processes row
		case row.name == procRow:
			if cfg.wants(procRow) {
				rs, err := runProcessRow(cfg)
				if err != nil {
					return rep, err
				}
				rep.Results = append(rep.Results, rs...)
			}
			continue
		case !cfg.wants(row.name):
			continue
		}
		cfg.progress("channel %s", row.name)
		var ours func(time.Duration) (Rate, error)
		base := func(d time.Duration) (Rate, error) { return pumpGoChan(row.size, d) }
		baseName := goChanName
		switch row.kind {
		case "goroutines":
			ours = func(d time.Duration) (Rate, error) {
				st, err := pumpChannel(row.batch, row.size, d)
				return st.Rate, err
			}
		case "slots":
			ours = func(d time.Duration) (Rate, error) { return pumpSlots(row.batch, d) }
			base = pumpSlotChan
			baseName = "Go buffered chan of slots"
		}
		o, b, err := Measure(cfg, row.name, ours, base)
		if err != nil {
			return rep, err
		}
		rep.Results = append(rep.Results, Throughput(row.name, "Mpps", o/1e6, baseName, b/1e6))
	}
	return rep, nil
}

// runProcessRow measures the processes row, its reference (the goroutines
// row of the same batch and size) and their common baseline in turn, in
// short alternations (altsPerRound per round, the two rows in ABBA order),
// so that the ratio between the two compares runs less than a second apart
// on the same busy host, and a drift of its load favours neither. Both
// rows carry the CPU time the pair got per second (2 is two whole CPUs)
// and per packet: a low first figure with an unchanged second shows a
// host too busy to give the pair its CPUs, and which row it starved.
func runProcessRow(cfg Config) ([]Result, error) {
	cfg.progress("channel %s, with %s as its reference", procRow, refRow)
	rounds := max(cfg.Rounds, 1)
	alts := rounds * altsPerRound
	d := cfg.Duration / time.Duration(alts)
	var gs, ps []pumpStats
	var bs []float64
	for i := range alts {
		if i%altsPerRound == 0 {
			if err := cfg.roundStart(procRow, i/altsPerRound, rounds); err != nil {
				return nil, err
			}
		}
		var g, p pumpStats
		var err error
		for j := range 2 {
			if (i+j)%2 == 0 {
				if g, err = pumpChannel(32, 64, d); err != nil {
					return nil, fmt.Errorf("%s: %w", refRow, err)
				}
			} else if p, err = pumpProcess(32, 64, d); err != nil {
				return nil, fmt.Errorf("%s: %w", procRow, err)
			}
		}
		b, err := pumpGoChan(64, d)
		if err != nil {
			return nil, fmt.Errorf("%s baseline: %w", procRow, err)
		}
		gs, ps, bs = append(gs, g), append(ps, p), append(bs, b.PerSecond())
	}
	base := median(bs) / 1e6
	g, p := medianPump(gs), medianPump(ps)
	ref := Throughput(refRow, "Mpps", g.PerSecond()/1e6, goChanName, base)
	ref.Extra = g.extra()
	r := Throughput(procRow, "Mpps", p.PerSecond()/1e6, goChanName, base)
	r.Extra = p.extra()
	vs := 0.0
	if ref.Value > 0 {
		vs = r.Value / ref.Value
	}
	// Three decimals: at two, 0.796 would print as the 0.8 it missed.
	r.Extra["vs_goroutines_batch32"] = math.Round(vs*1000) / 1000
	r.Extra["vs_goroutines_min"] = minVsGoroutines
	r.Extra["vs_goroutines_ok"] = vs >= minVsGoroutines
	if vs < minVsGoroutines {
		cfg.progress("channel %s: %.2f× the goroutines row, below %.1f (CPU per second: processes %.2f, goroutines %.2f)",
			procRow, vs, minVsGoroutines, p.cpuPerSecond(), g.cpuPerSecond())
	}
	return []Result{ref, r}, nil
}

func round2(v float64) float64 { return float64(int(v*100+0.5)) / 100 }

// writePayload fills a packet of size bytes: sequence number, then a
// pattern; readPayload reads every byte back and returns the sequence.
func writePayload(b []byte, seq uint64) {
	binary.LittleEndian.PutUint64(b, seq)
	for i := 8; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], seq^uint64(i))
	}
}

func readPayload(b []byte) (seq, sum uint64) {
	seq = binary.LittleEndian.Uint64(b)
	for i := 8; i+8 <= len(b); i += 8 {
		sum += binary.LittleEndian.Uint64(b[i:])
	}
	return seq, sum
}

// appProducer is the app's loop: alloc, write payload, send, until stop or
// the channel dies. Short of buffers or of TX room, it waits as
// idle says: yield, then sleep until the nexus provides them.
func appProducer(a *channel.App, batch, size int, stop *atomic.Bool) error {
	bufs := make([]channel.Buf, batch)
	var seq uint64
	var idle idler
	waitFor := func(what channel.WaitSet) error {
		return idle.wait(func() error { _, err := a.WaitFor(what, idleSleep); return err })
	}
	for !stop.Load() {
		n, err := a.Alloc(bufs)
		if err != nil {
			return err
		}
		if n == 0 {
			if err := waitFor(channel.WaitAlloc); err != nil {
				return err
			}
			continue
		}
		idle.busy()
		for i := range n {
			bufs[i].Data = bufs[i].Data[:size]
			writePayload(bufs[i].Data, seq)
			seq++
		}
		for sent := 0; sent < n && !stop.Load(); {
			k, err := a.Send(bufs[sent:n])
			if err != nil {
				return err
			}
			if k == 0 {
				if err := waitFor(channel.WaitTxRoom); err != nil {
					return err
				}
				continue
			}
			idle.busy()
			sent += k
		}
	}
	return nil
}

// nexusConsumer is the nexus's loop: take from TX, check and read the
// payload, release, refill; for d after the first packet, and at least
// minWindowPackets. With nothing on the TX ring it waits as idle says:
// yield, then sleep in Channel.Wait. The sleeps, signals and CPU time it
// reports are those of the measured window: the CPU time of this process,
// and of the app's process through peerCPU if it has one of its own (nil:
// it is in this process).
func nexusConsumer(c *channel.Channel, batch int, d time.Duration, peerCPU func() time.Duration) (pumpStats, error) {
	bufs := make([]channel.Buf, max(batch, 64))
	var seq, seq0, sink uint64
	var start time.Time
	var c0 channel.Counters
	var cpu0 time.Duration
	pairCPU := func() time.Duration {
		if peerCPU == nil {
			return processCPU()
		}
		return processCPU() + peerCPU()
	}
	var idle idler
	began := time.Now()
	for iter := 0; ; iter++ {
		n, err := c.TakeTX(bufs)
		if err != nil {
			return pumpStats{}, err
		}
		for _, b := range bufs[:n] {
			s, sum := readPayload(b.Data)
			if s != seq {
				return pumpStats{}, fmt.Errorf("packet %d arrived as %d: lost or reordered", seq, s)
			}
			sink += sum
			seq++
		}
		c.Release(bufs[:n])
		if err := c.Sync(); err != nil {
			return pumpStats{}, err
		}
		if n == 0 {
			if err := idle.wait(func() error { return c.Wait(idleSleep) }); err != nil {
				return pumpStats{}, err
			}
		} else {
			idle.busy()
		}
		if iter&63 == 0 || n == 0 {
			now := time.Now()
			if start.IsZero() {
				if seq > 0 {
					start, seq0, c0, cpu0 = now, seq, c.Counters(), pairCPU()
				} else if now.Sub(began) > 10*time.Second {
					return pumpStats{}, fmt.Errorf("no packet from the app within 10s")
				}
			} else if el := now.Sub(start); el >= d && seq-seq0 >= minWindowPackets {
				_ = sink
				c1 := c.Counters()
				return pumpStats{
					Rate:    Rate{Count: float64(seq - seq0), Elapsed: el},
					CPU:     pairCPU() - cpu0,
					Sleeps:  c1.Wakeups - c0.Wakeups,
					Signals: c1.Notifications - c0.Notifications,
				}, nil
			} else if el > d+10*time.Second {
				return pumpStats{}, fmt.Errorf("%d packets in %v: the app stalled", seq-seq0, el)
			}
		}
	}
}

// minWindowPackets extends a measured window that saw fewer packets (a
// host so busy that it barely ran the pair): its rate would say nothing.
// A pair that runs at all passes it within microseconds.
const minWindowPackets = 1024

// idleSleep bounds one sleep of a bench loop, so it looks at its clock and
// stop flag at least this often.
const idleSleep = 100 * time.Millisecond

// A loop with nothing to do polls on for idleSpin, then yields the CPU
// between polls until idleYield, then sleeps until signalled. idleSpin is
// about two batches of 32 packets written: a peer running on its own CPU
// provides within it. Past idleYield the peer is most likely descheduled
// for a time slice (milliseconds) rather than waiting for this CPU, and a
// wake-up (microseconds) is cheap beside that wait.
const (
	idleSpin  = 2 * time.Microsecond
	idleYield = 50 * time.Microsecond
)

// idler paces a polling loop that found nothing to do (see idleSpin). A
// peer busy on another CPU provides within a few microseconds: polling
// sees it at once, where a sleep and wake-up per batch would cost more than
// the batch. A peer that does not provide that soon may be waiting for
// this very CPU: sched_yield hands it over at once, where polling would
// hold it for the rest of the time slice (milliseconds), the whole pair
// moving one ring's worth per slice. A peer gone longer (descheduled,
// or idle) is waited for asleep, which also hands over the CPU.
type idler struct {
	since time.Time // first idle poll of this idle period; zero when busy
}

func (w *idler) busy() { w.since = time.Time{} }

func (w *idler) wait(sleep func() error) error {
	now := time.Now()
	if w.since.IsZero() {
		w.since = now
	}
	switch idle := now.Sub(w.since); {
	case idle < idleSpin:
		runtime.Gosched() // a peer goroutine on this P
	case idle < idleYield:
		runtime.Gosched()
		syscalls.Yield() // a peer thread or process on this CPU
	default:
		return sleep()
	}
	return nil
}

// pumpStats is what a channel pump measured in its window: its rate, the
// CPU time both ends used, and how often the nexus side slept
// (Channel.Wait) and signalled the app.
type pumpStats struct {
	Rate
	CPU             time.Duration
	Sleeps, Signals uint64
}

func (p pumpStats) cpuPerSecond() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return round2(p.CPU.Seconds() / p.Elapsed.Seconds())
}

// cpuPerPacket returns the CPU time both ends spent per packet.
func (p pumpStats) cpuPerPacket() time.Duration {
	if p.Count <= 0 {
		return 0
	}
	return time.Duration(float64(p.CPU) / p.Count)
}

// extra returns the figures a row reports beside its rate: sleeps and
// signals per million packets, CPU seconds per second and CPU nanoseconds
// per packet.
func (p pumpStats) extra() map[string]any {
	perM := func(n uint64) float64 {
		if p.Count <= 0 {
			return 0
		}
		return round2(float64(n) / p.Count * 1e6)
	}
	return map[string]any{
		"cpu_per_s":             p.cpuPerSecond(),
		"cpu_ns_per_pkt":        round2(float64(p.cpuPerPacket())),
		"nexus_sleeps_per_mpkt": perM(p.Sleeps),
		"app_signals_per_mpkt":  perM(p.Signals),
	}
}

// medianPump returns the run of median rate.
func medianPump(v []pumpStats) pumpStats {
	s := slices.Clone(v)
	slices.SortFunc(s, func(a, b pumpStats) int { return cmp.Compare(a.PerSecond(), b.PerSecond()) })
	return s[len(s)/2]
}

// processCPU returns the CPU time this process used so far.
func processCPU() time.Duration {
	d, err := syscalls.ProcessCPU()
	if err != nil {
		return 0
	}
	return d
}

// childCPU returns the CPU time the live threads of process pid used so
// far, to the nanosecond (the first field of each thread's schedstat; the
// process-wide figures in /proc/pid/stat count 10 ms ticks). 0 when it
// cannot be read.
func childCPU(pid int) time.Duration {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		if ns, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			sum += time.Duration(ns)
		}
	}
	return sum
}

func pumpChannel(batch, size int, d time.Duration) (pumpStats, error) {
	c, err := channel.New(channel.Options{Name: "bench"})
	if err != nil {
		return pumpStats{}, err
	}
	defer c.Close()
	a, err := c.AttachLocal()
	if err != nil {
		return pumpStats{}, err
	}
	defer a.Close()
	var stop atomic.Bool
	var wg sync.WaitGroup
	var perr error
	wg.Go(func() { perr = appProducer(a, batch, size, &stop) })
	st, err := nexusConsumer(c, batch, d, nil)
	stop.Store(true)
	a.Interrupt() // the producer may sleep for buffers nobody will provide now
	wg.Wait()
	if err == nil {
		err = perr
	}
	return st, err
}

// pumpGoChan is the baseline: the same packets through buffered Go chans,
// free buffers coming back through a chan as the free ring does.
func pumpGoChan(size int, d time.Duration) (Rate, error) {
	const depth = 1024
	free := make(chan []byte, depth)
	data := make(chan []byte, depth)
	for range depth {
		free <- make([]byte, 2048)
	}
	var stop atomic.Bool
	go func() {
		defer close(data)
		var seq uint64
		for !stop.Load() {
			b := (<-free)[:size]
			writePayload(b, seq)
			seq++
			data <- b
		}
	}()
	var seq, sink uint64
	start := time.Now()
	var err error
	for b := range data {
		if !stop.Load() {
			s, sum := readPayload(b)
			if s != seq && err == nil {
				err = fmt.Errorf("go chan: packet %d arrived as %d", seq, s)
			}
			sink += sum
			seq++
			if seq&1023 == 0 && time.Since(start) >= d {
				stop.Store(true)
			}
		}
		free <- b
	}
	_ = sink
	return Rate{Count: float64(seq), Elapsed: time.Since(start)}, err
}

// pumpSlots exchanges bare slots through a ring in shared memory.
func pumpSlots(batch int, d time.Duration) (Rate, error) {
	const size = 1024
	r, err := shm.NewRegion(shm.RegionOptions{Name: "bench-ring", Size: (ring.MemSize(size) + shm.PageSize - 1) / shm.PageSize * shm.PageSize})
	if err != nil {
		return Rate{}, err
	}
	defer r.Close()
	m, err := shm.Map(r.FD(), 0, r.Size(), true)
	if err != nil {
		return Rate{}, err
	}
	defer m.Unmap()
	if err := ring.Init(m.Bytes(), size); err != nil {
		return Rate{}, err
	}
	p, err := ring.NewProducer(m.Bytes(), size)
	if err != nil {
		return Rate{}, err
	}
	c, err := ring.NewConsumer(m.Bytes(), size)
	if err != nil {
		return Rate{}, err
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		var i uint32
		for !stop.Load() {
			k, _ := p.Reserve(batch)
			if k == 0 {
				runtime.Gosched()
				continue
			}
			for j := range k {
				p.Set(j, ring.Slot{Index: i, Len: 64})
				i++
			}
			p.Commit(k)
		}
	})
	var next uint32
	var n uint64
	start := time.Now()
	for iter := 0; ; iter++ {
		k, _ := c.Peek(batch)
		for j := range k {
			if c.At(j).Index != next {
				stop.Store(true)
				wg.Wait()
				return Rate{}, fmt.Errorf("slot %d arrived as %d", next, c.At(j).Index)
			}
			next++
		}
		c.Release(k)
		n += uint64(k)
		if k == 0 {
			runtime.Gosched()
		}
		if iter&255 == 0 && time.Since(start) >= d {
			break
		}
	}
	el := time.Since(start)
	stop.Store(true)
	wg.Wait()
	return Rate{Count: float64(n), Elapsed: el}, nil
}

func pumpSlotChan(d time.Duration) (Rate, error) {
	ch := make(chan ring.Slot, 1024)
	var stop atomic.Bool
	go func() {
		defer close(ch)
		var i uint32
		for !stop.Load() {
			ch <- ring.Slot{Index: i, Len: 64}
			i++
		}
	}()
	var n uint64
	start := time.Now()
	var err error
	for s := range ch {
		if stop.Load() {
			continue
		}
		if s.Index != uint32(n) && err == nil {
			err = fmt.Errorf("go chan: slot %d arrived as %d", n, s.Index)
		}
		n++
		if n&1023 == 0 && time.Since(start) >= d {
			stop.Store(true)
		}
	}
	return Rate{Count: float64(n), Elapsed: time.Since(start)}, err
}
