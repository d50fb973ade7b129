// Package bench runs the `skylane bench` scenarios (docs/benchmarks.md):
// each measures our path and its baseline in the same run, alternating
// them, and reports the ratio (above 1 means we beat the baseline).
//
// Invariants: a figure is printed only if it was measured; a scenario that
// cannot run returns an error and prints nothing for that row.
package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is one row of a scenario's report.
type Result struct {
	Name          string  `json:"name"`
	Value         float64 `json:"value"`
	Unit          string  `json:"unit"`
	BaselineName  string  `json:"baseline_name"`
	BaselineValue float64 `json:"baseline_value"`
	Ratio         float64 `json:"ratio"`
	// Bound, BaselineBound and RatioBound say that Value, BaselineValue
	// or Ratio is a bound, not a measurement: BoundLower (the figure is
	// above it), BoundUpper (below it), or, for the ratio only,
	// BoundUnknown (both figures are bounds the same way, so the ratio
	// is not known; Ratio is 0). Empty: measured. A figure too poor to
	// measure in its window (a FIFO that answers no request) is reported
	// so, not as a failure.
	Bound         string         `json:"bound,omitempty"`
	BaselineBound string         `json:"baseline_bound,omitempty"`
	RatioBound    string         `json:"ratio_bound,omitempty"`
	LowerIsBetter bool           `json:"lower_is_better,omitempty"`
	Extra         map[string]any `json:"extra,omitempty"`
}

// Bounds of Result.Bound, BaselineBound and RatioBound.
const (
	BoundLower   = "lower"
	BoundUpper   = "upper"
	BoundUnknown = "unknown" // ratio only: not implied by the two bounds
)

// Report is a scenario's output.
type Report struct {
	Scenario string   `json:"scenario"`
	Machine  string   `json:"machine"`
	Results  []Result `json:"results"`
}

// Config holds the common flags.
type Config struct {
	Duration time.Duration // per measured point
	Rounds   int           // alternations of ours and baseline per point
	Progress io.Writer     // stderr; nil for silence
	Filter   string        // run only rows whose name contains this
	Dev      bool          // tcp, burst, http: on a veth pair with the kernel drivers (root), not memif
	Driver   string        // burst --dev: the nexus's driver on the veth (drivers.AFPacket, AFXDP); empty: AF_PACKET
	// Stop, when closed (skylane bench closes it on SIGINT or SIGTERM),
	// ends the run at the next round with ErrInterrupted, so that the
	// scenario's cleanup (namespaces, veths, XDP programs) runs. nil: never.
	Stop <-chan struct{}
}

// ErrInterrupted is returned by a scenario stopped through Config.Stop.
var ErrInterrupted = errors.New("interrupted")

// roundStart announces round i of rounds of name and returns
// ErrInterrupted if the run was asked to stop.
func (c Config) roundStart(name string, i, rounds int) error {
	select {
	case <-c.Stop:
		return fmt.Errorf("%s: %w", name, ErrInterrupted)
	default:
	}
	c.progress("  %s: round %d/%d", name, i+1, rounds)
	return nil
}

func (c Config) progress(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, format+"\n", args...)
	}
}

func (c Config) wants(name string) bool { return c.Filter == "" || strings.Contains(name, c.Filter) }

// Machine describes this machine as docs/benchmarks.md asks.
func Machine() string {
	return fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
}

// Rate is a measured count over a time.
type Rate struct {
	Count   float64
	Elapsed time.Duration
	// cpu is the CPU time spent in Elapsed, for the rows that report
	// CPU per byte (see cpu.go); zero where not measured.
	cpu cpuUse
}

// PerSecond returns Count/Elapsed.
func (r Rate) PerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return r.Count / r.Elapsed.Seconds()
}

// Measure runs ours and base alternately, cfg.Rounds times each for
// cfg.Duration/cfg.Rounds, and returns the median rate of each.
func Measure(cfg Config, name string, ours, base func(d time.Duration) (Rate, error)) (o, b float64, err error) {
	rounds := max(cfg.Rounds, 1)
	d := cfg.Duration / time.Duration(rounds)
	var os, bs []float64
	for i := range rounds {
		if err := cfg.roundStart(name, i, rounds); err != nil {
			return 0, 0, err
		}
		r, err := ours(d)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", name, err)
		}
		os = append(os, r.PerSecond())
		r, err = base(d)
		if err != nil {
			return 0, 0, fmt.Errorf("%s baseline: %w", name, err)
		}
		bs = append(bs, r.PerSecond())
	}
	return median(os), median(bs), nil
}

func median(v []float64) float64 {
	sort.Float64s(v)
	return v[len(v)/2]
}

// Throughput builds a higher-is-better row (ratio = value / baseline).
func Throughput(name, unit string, value float64, baseName string, baseValue float64) Result {
	r := Result{Name: name, Unit: unit, Value: value, BaselineName: baseName, BaselineValue: baseValue}
	if baseValue > 0 {
		r.Ratio = value / baseValue
	} else { // x/0 and 0/0: no figure, rather than a ratio of 0
		r.RatioBound = BoundUnknown
	}
	return r
}

// Latency builds a lower-is-better row (ratio = baseline / value). bound
// and baseBound are "" for a measured figure or BoundLower for one known
// only to be above the given value; the ratio carries the bound they imply.
func Latency(name, unit string, value float64, bound, baseName string, baseValue float64, baseBound string) Result {
	r := Result{Name: name, Unit: unit, Value: value, Bound: bound, BaselineName: baseName, BaselineValue: baseValue,
		BaselineBound: baseBound, LowerIsBetter: true}
	switch {
	case bound != "" && baseBound != "":
		r.RatioBound = BoundUnknown
		return r
	case baseBound == BoundLower: // the baseline is slower still
		r.RatioBound = BoundLower
	case bound == BoundLower: // we are slower still
		r.RatioBound = BoundUpper
	}
	if value > 0 {
		r.Ratio = baseValue / value
	}
	return r
}

// Figures returns the row's value, baseline value and ratio as text, each
// marked with its bound: ">250.00" for a lower bound, "<0.50" for an upper
// one, "unknown" for a ratio no figure implies.
func (r Result) Figures() (value, baseline, ratio string) {
	return boundFigure(r.Value, r.Bound), boundFigure(r.BaselineValue, r.BaselineBound), boundFigure(r.Ratio, r.RatioBound)
}

// boundFigure prints a figure with its bound: ">250.00" for a lower bound.
func boundFigure(v float64, bound string) string {
	switch bound {
	case BoundLower:
		return fmt.Sprintf(">%.2f", v)
	case BoundUpper:
		return fmt.Sprintf("<%.2f", v)
	case BoundUnknown:
		return "unknown"
	}
	return fmt.Sprintf("%.2f", v)
}

// Print writes the report as a table, or as JSON.
func (r Report) Print(w io.Writer, asJSON bool) error {
	if asJSON {
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return e.Encode(r)
	}
	fmt.Fprintf(w, "scenario %s on %s\n", r.Scenario, r.Machine)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "row\tvalue\tunit\tbaseline\tbaseline value\tratio\t")
	for _, x := range r.Results {
		v, b, ratio := x.Figures()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", x.Name, v, x.Unit, x.BaselineName, b, ratio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, x := range r.Results {
		if len(x.Extra) == 0 {
			continue
		}
		keys := make([]string, 0, len(x.Extra))
		for k := range x.Extra {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s=%v", k, x.Extra[k]))
		}
		fmt.Fprintf(w, "  %s: %s\n", x.Name, strings.Join(parts, " "))
	}
	return nil
}

// Scenario is one `skylane bench` scenario.
type Scenario struct {
	Name string
	Help string
	Run  func(cfg Config) (Report, error)
}

// Scenarios lists the scenarios, by name.
func Scenarios() []Scenario {
	return []Scenario{
		{Name: "channel", Help: "packets through one channel: goroutines, processes, bare slots; baseline a Go chan", Run: runChannel},
		{Name: "fsw-rx", Help: "packets/s from a memif link through the flowswitch to channels, one core; baseline a ring-to-ring copy", Run: runFswRx},
		{Name: "fsw-tx", Help: "packets/s from a channel's TX ring through the flowswitch checks to a memif link, one core; baseline the same path with checks off", Run: runFswTx},
		{Name: "tcp", Help: "one TCP stream and 64-byte RPCs between two user-space stacks through the flowswitch over memif; baselines gVisor link/pipe and kernel loopback", Run: runTCP},
		{Name: "burst", Help: "regulation on a 100 Mbit/s memif: RPC p99 under 8 bulk flows, bulk utilisation, Jain's index of the 8; baseline a plain 2048-frame FIFO (regulation off), same run; --dev: on a veth pair, the kernel's stack at the far end (root)", Run: runBurst},
		{Name: "conns", Help: "new TCP connections on a user-space server on AF_XDP, from kernel clients over a veth: accepted and answered per second, open/close churn (and what comes back after), memory per connection with 100,000 held; baseline a kernel server on the same veth, same run; needs root", Run: runConns},
		{Name: "attach", Help: "an app attaching over the control socket: connect, open a port (channel sent and mapped), listen on a TCP port, p50; baseline a kernel socket()+bind()+listen()", Run: runAttach},
		{Name: "http", Help: "requests/s and p99 of net/http on a user-space stack (AF_XDP, AF_PACKET) loaded by wrk -c16 from a peer namespace over a veth; baseline net/http on the kernel's stack of the same veth, same run; --dev only, needs root and wrk", Run: runHTTP},
		{Name: "upgrade", Help: "a nexus on AF_XDP replaced 10 times by a takeover under a UDP request/response stream (1 per ms) and a bulk TCP stream: longest gap and stall, p50; baseline a plain restart with the app re-attaching, same run; needs root", Run: runUpgrade},
		{Name: "udp", Help: "64-byte UDP receive rate over a veth into a user-space consumer (AF_XDP, AF_PACKET); baseline a kernel UDP socket with recvmmsg, same veth; needs root", Run: runUDP},
	}
}
