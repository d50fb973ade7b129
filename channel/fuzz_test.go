package channel

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"testing"

	"github.com/skylane/skylane/pool"
)

// smallOptions keeps fuzzed channels small, so wild indices often land.
var smallOptions = Options{Name: "fuzz", TxSize: 16, FreeSize: 16, RxSize: 16, AllocSize: 16, EventSize: 8, Pool: pool.Options{MaxSegments: 4}}

// FuzzNexusReads plays a hostile app: the fuzzer's bytes are written as the
// app's ring indices, slots and room flags (TX and free rings). The nexus
// must never panic, must either accept or defunct, must keep its buffer
// accounting exact while it accepts, and signals the app at most once per
// Sync whatever the flags say.
func FuzzNexusReads(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{2, 0, 0, 0, 9, 0, 0, 0, 64, 0, 0, 0, 9, 0, 0, 0, 64, 0, 0, 0})
	f.Add([]byte{255, 255, 255, 255, 0, 0, 0, 128, 0, 1, 0, 0})
	f.Add([]byte{4, 255, 255, 255, 3, 8, 0, 0, 5, 1, 0, 0, 3, 4, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, a := newPair(t, smallOptions)
		c.Sync() // hand out some buffers first
		bufs := make([]Buf, 16)
		for len(data) >= 4 {
			op := data[0] % 6
			arg := binary.LittleEndian.Uint32(data)
			data = data[4:]
			switch op {
			case 0: // move the TX producer index anywhere
				*a.ringWord(RingTX, 0) = arg
			case 1: // write a TX slot
				slot := a.maps[0].Bytes()[a.desc.Rings[RingTX].Offset+0x100+int(arg>>8%16)*8:]
				binary.LittleEndian.PutUint64(slot, uint64(arg)*0x9E3779B97F4A7C15)
			case 2: // move the free producer index
				*a.ringWord(RingFree, 0) = arg
			case 3: // honest traffic in between
				n, _ := a.Alloc(bufs[:arg%16])
				a.Send(bufs[:n])
			case 4: // any value in the TX ring's producer flags word
				*a.ringWord(RingTX, 4) = arg
			case 5: // and in the free ring's
				*a.ringWord(RingFree, 4) = arg
			}
			before := c.Counters().Notifications
			n, err := c.TakeTX(bufs)
			if err == nil {
				if n > len(bufs) {
					t.Fatalf("took %d into %d", n, len(bufs))
				}
				c.Release(bufs[:n])
				err = c.Sync()
			}
			if err != nil {
				if !errors.Is(err, ErrDefunct) {
					t.Fatalf("error is not a defunct: %v", err)
				}
				return
			}
			if got := c.Counters().Notifications - before; got > 1 {
				t.Fatalf("%d signals in one round", got)
			}
			st := c.Pool().Stats()
			if st.FreeBuffers > st.BuffersTotal || st.FreeBuffers < 0 {
				t.Fatalf("pool accounting: %+v", st)
			}
		}
	})
}

// FuzzAppReads plays a broken nexus: arbitrary RX, alloc and event slots.
// The app must never panic nor touch memory outside what it maps.
func FuzzAppReads(f *testing.F) {
	f.Add([]byte{0, 1, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{2, 7, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, a := newPair(t, smallOptions)
		mem := c.maps[0].Bytes()
		bufs := make([]Buf, 16)
		evs := make([]Event, 8)
		for len(data) >= 8 {
			r := []int{RingRX, RingAlloc, RingEvent}[data[0]%3]
			rd := c.desc.Rings[r]
			v := binary.LittleEndian.Uint64(data)
			data = data[8:]
			binary.LittleEndian.PutUint64(mem[rd.Offset+0x100+int(v>>40%uint64(rd.Size))*8:], v)
			binary.LittleEndian.PutUint32(mem[rd.Offset:], uint32(v>>8)%uint32(2*rd.Size))
			for _, err := range []error{
				func() error { n, err := a.Receive(bufs); touch(bufs[:n]); return err }(),
				func() error { n, err := a.Alloc(bufs); touch(bufs[:n]); return err }(),
				func() error { _, err := a.Events(evs); return err }(),
			} {
				if err != nil && !errors.Is(err, ErrBadSlot) && !errors.Is(err, ErrDefunct) && err.Error() == "" {
					t.Fatalf("unexpected error %v", err)
				}
			}
		}
	})
}

func touch(bufs []Buf) {
	for _, b := range bufs {
		if len(b.Data) > 0 {
			b.Data[0]++
			b.Data[len(b.Data)-1]++
		}
	}
}

// FuzzDescriptor: whatever descriptor arrives with the fds, Attach either
// maps the channel or refuses with an error; it never panics.
func FuzzDescriptor(f *testing.F) {
	c, err := New(Options{Name: "fuzz-desc", Pool: pool.Options{MaxSegments: 4}})
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	good, _ := json.Marshal(c.desc)
	f.Add(good)
	f.Add([]byte(`{"version":1,"buffer_size":2048,"segment_size":32768,"max_segments":100000}`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var d Descriptor
		if json.Unmarshal(msg, &d) != nil {
			return
		}
		_, fds, err := c.Share()
		if err != nil {
			t.Fatal(err)
		}
		a, err := Attach(d, fds)
		if err == nil {
			a.Close()
		}
	})
}
