package bench

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/skylane/skylane/capture"
)

// fswCaptureBase names the capture row's baseline.
const fswCaptureBase = "flowswitch without capture"

// fswCaptureRow measures the fsw-rx workload with a capture of every
// frame running (a ring of the default size, read and discarded by a
// goroutine as the nexus's capture session reads it, without the socket)
// against the same switch without a capture: the ratio is the capture's
// cost on the datapath (two copies per packet, device-rx and app-rx),
// below 1. The capture's drops, if its reader falls behind, are the
// capture's; the switch must lose nothing.
func fswCaptureRow(cfg Config, name string, flows, size int) (Result, error) {
	w := newFswWorkload(flows, size)
	rig, err := newFswRig(&w)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", name, err)
	}
	defer rig.closer()
	plain, err := newFswRig(&w)
	if err != nil {
		return Result{}, fmt.Errorf("%s baseline: %w", name, err)
	}
	defer plain.closer()
	ring, err := capture.NewRing(capture.Options{})
	if err != nil {
		return Result{}, err
	}
	rig.sw.AddCapture(ring)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ring.Wait(100 * time.Millisecond) {
			ring.Read(1024, func(*capture.Record) {})
		}
	}()
	defer func() { rig.sw.RemoveCapture(ring); ring.Close(); wg.Wait() }()
	for range len(w.touched) {
		if _, err := rig.step(); err != nil {
			return Result{}, fmt.Errorf("%s warm-up: %w", name, err)
		}
		if _, err := plain.step(); err != nil {
			return Result{}, fmt.Errorf("%s baseline warm-up: %w", name, err)
		}
	}
	o, b, err := Measure(cfg, name,
		func(d time.Duration) (Rate, error) { return fswLoop(d, rig.step) },
		func(d time.Duration) (Rate, error) { return fswLoop(d, plain.step) })
	if err != nil {
		return Result{}, err
	}
	if o <= 0 || b <= 0 {
		return Result{}, errors.New(name + ": nothing measured")
	}
	st := rig.sw.Stats()
	if st.Delivered != st.Packets {
		return Result{}, fmt.Errorf("%s: switch dropped packets with a capture running: %+v", name, st)
	}
	res := Throughput(name, "Mpps", o/1e6, fswCaptureBase, b/1e6)
	matched, drops := ring.Matched(), ring.Drops()
	res.Extra = map[string]any{
		"capture_matched":    matched,
		"capture_ring_drops": drops,
		"capture_drop_share": round2(float64(drops) / float64(max(matched, 1))),
		"batch":              fswBatch,
	}
	return res, nil
}
