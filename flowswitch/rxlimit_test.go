package flowswitch_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flowswitch"
)

// addPortWith adds a port with options o to r, on a fresh channel.
func (r *rig) addPortWith(t testing.TB, o flowswitch.AddPortOptions) {
	t.Helper()
	ch, app := newChannel(t, channel.Options{Name: fmt.Sprintf("port%d", len(r.chans))})
	id, err := r.sw.AddPortWith(ch, o)
	if err != nil {
		t.Fatal(err)
	}
	r.chans, r.apps, r.ports = append(r.chans, ch), append(r.apps, app), append(r.ports, id)
}

// dropsOf returns the snapshot's count for one RX drop reason.
func dropsOf(t testing.TB, s *flowswitch.Switch, reason string) uint64 {
	t.Helper()
	for _, d := range s.Snapshot().Drops {
		if d.Dir == "rx" && d.Reason == reason {
			return d.Packets
		}
	}
	t.Fatalf("no rx drop reason %q in the snapshot", reason)
	return 0
}

// A flooded port takes its budget per input batch, the first packets of
// its flows in order; the other port of the batch loses nothing.
func TestRxBudget(t *testing.T) {
	r := newRig(t, flowswitch.Options{Regulation: &flowswitch.RegulationOptions{RxBudget: 4, NoMitigation: true}},
		channel.Options{}, channel.Options{})
	r.register(t, 0, 1000, 53)
	r.register(t, 1, 2000, 80)
	var frames [][]byte
	var wantA, wantB []string
	for i := range 10 {
		tag := fmt.Sprintf("a%d", i)
		frames = append(frames, udpFrame(t, 1000, 53, tag, 0))
		if i < 4 {
			wantA = append(wantA, tag)
		}
		if i%3 == 0 {
			tag := fmt.Sprintf("b%d", i/3)
			frames = append(frames, udpFrame(t, 2000, 80, tag, 0))
			wantB = append(wantB, tag)
		}
	}
	allocs := r.chans[0].Pool().Stats().Allocs
	r.write(t, frames...)
	r.rxOnce(t, len(frames))
	if got := r.chans[0].Pool().Stats().Allocs - allocs; got != 4 {
		t.Errorf("flooded port's pool handed out %d buffers, want 4: refused packets must cost no copy", got)
	}
	if got := r.drain(t, 0); !equal(got, wantA) {
		t.Errorf("flooded port got %v, want %v", got, wantA)
	}
	if got := r.drain(t, 1); !equal(got, wantB) {
		t.Errorf("other port got %v, want %v", got, wantB)
	}
	if st := r.sw.Stats(); st.RxBudgetDrops != 6 || st.RxRingDrops != 0 || st.Delivered != uint64(4+len(wantB)) {
		t.Errorf("stats: budget drops %d, ring drops %d, delivered %d", st.RxBudgetDrops, st.RxRingDrops, st.Delivered)
	}
	if d := dropsOf(t, r.sw, "rx_budget"); d != 6 {
		t.Errorf("rx_budget drops %d, want 6", d)
	}
	snap := r.sw.Snapshot()
	if ps := snap.Ports[0].Regulation; ps == nil || ps.RxBudget != 6 {
		t.Errorf("flooded port's regulation stats %+v", ps)
	}
	if ps := snap.Ports[1].Regulation; ps == nil || ps.RxBudget != 0 {
		t.Errorf("other port's regulation stats %+v", ps)
	}

	// The budget is per input batch: the next batch brings a fresh one.
	r.write(t, udpFrame(t, 1000, 53, "next", 0))
	r.rxOnce(t, 1)
	if got := r.drain(t, 0); !equal(got, []string{"next"}) {
		t.Errorf("next batch got %v", got)
	}
}

// A port's receive token bucket admits its burst, then its rate; the
// packets beyond are refused in order, before the copy.
func TestRxRate(t *testing.T) {
	var clock int64
	r := newRig(t, flowswitch.Options{Regulation: &flowswitch.RegulationOptions{NoMitigation: true},
		Now: func() int64 { return clock }})
	const rate, burst, size = 800_000, 4000, 1000 // 100 kB/s; frames of 1000 IP bytes
	r.addPortWith(t, flowswitch.AddPortOptions{RxRate: rate, RxBurst: burst})
	r.register(t, 0, 1000, 53)
	batch := func(prefix string, n int) {
		var frames [][]byte
		for i := range n {
			f := udpFrame(t, 1000, 53, fmt.Sprintf("%s%d", prefix, i), size+14)
			frames = append(frames, f)
		}
		r.write(t, frames...)
		r.rxOnce(t, n)
	}
	batch("a", 10)
	if got := r.drain(t, 0); !equal(got, []string{"a0", "a1", "a2", "a3"}) {
		t.Errorf("burst: got %v, want the first 4 (4000 bytes)", got)
	}
	clock += int64(25 * time.Millisecond) // 2500 bytes of credit
	batch("b", 5)
	if got := r.drain(t, 0); !equal(got, []string{"b0", "b1"}) {
		t.Errorf("after 25 ms: got %v, want the first 2", got)
	}
	if st := r.sw.Stats(); st.RxRateDrops != 9 {
		t.Errorf("rate drops %d, want 9", st.RxRateDrops)
	}
	if d := dropsOf(t, r.sw, "rx_rate"); d != 9 {
		t.Errorf("rx_rate drops %d, want 9", d)
	}
	if ps := r.sw.Snapshot().Ports[0].Regulation; ps == nil || ps.RxLimited != 9 || ps.RxRate != rate {
		t.Errorf("port regulation stats %+v", ps)
	}
}

func TestRxLimitOptions(t *testing.T) {
	if _, err := flowswitch.New(flowswitch.Options{Link: newRig(t, flowswitch.Options{}).peer,
		Regulation: &flowswitch.RegulationOptions{RxBudget: -1}}); err == nil {
		t.Error("negative RxBudget accepted")
	}
	plain := newRig(t, flowswitch.Options{})
	ch, err := channel.New(channel.Options{Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := plain.sw.AddPortWith(ch, flowswitch.AddPortOptions{RxRate: 1e6}); err == nil {
		t.Error("a receive rate without Regulation accepted")
	}
	reg := newRig(t, flowswitch.Options{Regulation: &flowswitch.RegulationOptions{}})
	if _, err := reg.sw.AddPortWith(ch, flowswitch.AddPortOptions{RxRate: -1}); err == nil {
		t.Error("negative receive rate accepted")
	}
}
