package flowswitch_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"testing"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// Documentation addresses: RFC 2544's benchmarking range 198.18.0.0/15 and
// RFC 3849's 2001:db8::/32.
var (
	localIP   = netip.MustParseAddr("198.18.0.1")
	remoteIP  = netip.MustParseAddr("198.19.0.2")
	localIP6  = netip.MustParseAddr("2001:db8::1")
	remoteIP6 = netip.MustParseAddr("2001:db8:1::2")
)

// rig is a switch on one end of a memif wire, the test writing frames on
// the other end, with user ports each bound to a channel and its app end.
type rig struct {
	sw    *flowswitch.Switch
	dev   netif.Link // the switch's end
	peer  netif.Link // the test's end: frames written here reach the switch
	chans []*channel.Channel
	apps  []*channel.App
	ports []flow.PortID
	// txFlags are the ring flags of every packet send puts on a TX ring.
	txFlags uint16
}

func newRig(t testing.TB, opts flowswitch.Options, chOpts ...channel.Options) *rig {
	t.Helper()
	a, b, err := memif.NewPair(memif.Options{QueueLen: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	opts.Link = a
	opts.LocalAddrs = []netip.Addr{localIP, localIP6}
	sw, err := flowswitch.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{sw: sw, dev: a, peer: b}
	for i, co := range chOpts {
		co.Name = fmt.Sprintf("port%d", i)
		ch, app := newChannel(t, co)
		r.chans = append(r.chans, ch)
		r.apps = append(r.apps, app)
		r.ports = append(r.ports, sw.AddPort(ch))
	}
	return r
}

// newChannel makes a channel and attaches its app end in this process,
// both closed when the test ends.
func newChannel(t testing.TB, o channel.Options) (*channel.Channel, *channel.App) {
	t.Helper()
	ch, err := channel.New(o)
	if err != nil {
		t.Fatal(err)
	}
	app, err := ch.AttachLocal()
	if err != nil {
		ch.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close(); ch.Close() })
	return ch, app
}

// register adds the UDP 5-tuple flow local:dport ← remote:sport for port i.
func (r *rig) register(t testing.TB, i int, sport, dport uint16) *flow.Entry {
	t.Helper()
	return r.registerFrom(t, i, netip.AddrPortFrom(remoteIP, sport), dport)
}

// registerFrom adds the UDP 5-tuple flow local:dport ← remote for port i.
func (r *rig) registerFrom(t testing.TB, i int, remote netip.AddrPort, dport uint16) *flow.Entry {
	t.Helper()
	k := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, dport), remote)
	e, err := r.sw.Register(r.ports[i], k, flow.Connected)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// udpFrame builds an Ethernet/IPv4/UDP frame from remote:sport to local:dport
// whose payload starts with tag, padded with zeros to size bytes in all.
func udpFrame(t testing.TB, sport, dport uint16, tag string, size int) []byte {
	return udpFrameFrom(t, netip.AddrPortFrom(remoteIP, sport), dport, tag, size)
}

// udpFrameFrom is udpFrame from any remote address and port.
func udpFrameFrom(t testing.TB, remote netip.AddrPort, dport uint16, tag string, size int) []byte {
	t.Helper()
	f := packettest.Frame{Src: remote, Dst: netip.AddrPortFrom(localIP, dport), Proto: packet.ProtoUDP,
		Payload: []byte(tag), Size: size}
	return f.Bytes()
}

func (r *rig) write(t testing.TB, frames ...[]byte) {
	t.Helper()
	n, err := r.peer.Write(frames)
	if err != nil || n != len(frames) {
		t.Fatalf("peer write: %d of %d, %v", n, len(frames), err)
	}
}

func (r *rig) rxOnce(t testing.TB, want int) {
	t.Helper()
	n, err := r.sw.RxOnce()
	if err != nil || n != want {
		t.Fatalf("RxOnce = %d, %v; want %d", n, err, want)
	}
}

// drain receives everything on app i's RX ring and returns each packet's tag
// (the UDP payload up to the first zero), freeing the buffers.
func (r *rig) drain(t testing.TB, i int) []string {
	t.Helper()
	var tags []string
	for _, b := range r.rawDrain(t, i) {
		var p packet.Parsed
		if err := packet.Parse(b, packet.RawIP, &p); err != nil {
			t.Fatalf("app got a bad packet: %v", err)
		}
		if p.L3Off+p.IPLen != len(b) {
			t.Fatalf("packet of %d bytes, IP length %d", len(b), p.IPLen)
		}
		pl := b[p.PayloadOff : p.PayloadOff+p.PayloadLen]
		end := 0
		for end < len(pl) && pl[end] != 0 {
			end++
		}
		tags = append(tags, string(pl[:end]))
	}
	return tags
}

func equal(a, b []string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

func TestNewOptions(t *testing.T) {
	a, b, err := memif.NewPair(memif.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	addrs := []netip.Addr{localIP}
	for _, tc := range []struct {
		name string
		opts flowswitch.Options
		ok   bool
	}{
		{"defaults", flowswitch.Options{Link: a, LocalAddrs: addrs}, true},
		{"max batch", flowswitch.Options{Link: a, LocalAddrs: addrs, Batch: flowswitch.MaxBatch}, true},
		{"no link", flowswitch.Options{LocalAddrs: addrs}, false},
		{"batch too big", flowswitch.Options{Link: a, Batch: flowswitch.MaxBatch + 1}, false},
		{"negative batch", flowswitch.Options{Link: a, Batch: -1}, false},
		{"limit above batch", flowswitch.Options{Link: a, Batch: 8, FlowBatchLimit: 9}, false},
		{"bad local addr", flowswitch.Options{Link: a, LocalAddrs: []netip.Addr{netip.MustParseAddr("224.0.0.1")}}, false},
	} {
		_, err := flowswitch.New(tc.opts)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v", tc.name, err)
		}
	}
}

func TestRegisterUnknownPort(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{})
	k := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, 53), netip.AddrPortFrom(remoteIP, 1000))
	for _, p := range []flow.PortID{flowswitch.HostPort, r.ports[0] + 1} {
		if _, err := r.sw.Register(p, k, flow.Connected); !errors.Is(err, flowswitch.ErrNoPort) {
			t.Errorf("Register(port %d) = %v, want ErrNoPort", p, err)
		}
	}
	if _, err := r.sw.Register(r.ports[0], k, flow.Connected); err != nil {
		t.Fatal(err)
	}
	if _, err := r.sw.Register(r.ports[0], k, flow.Connected); !errors.Is(err, flow.ErrPortInUse) {
		t.Errorf("second Register = %v, want ErrPortInUse", err)
	}
}

// A port a kernel socket holds (Options.PortTaken) is refused; the others
// register.
func TestRegisterKernelPortTaken(t *testing.T) {
	r := newRig(t, flowswitch.Options{PortTaken: func(proto uint8, port uint16) bool {
		return proto == packet.ProtoTCP && port == 22
	}}, channel.Options{})
	remote := netip.AddrPortFrom(remoteIP, 1000)
	if _, err := r.sw.Register(r.ports[0], packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(localIP, 22), remote), flow.Connected); !errors.Is(err, flow.ErrPortInUse) {
		t.Errorf("Register(tcp 22 held by the kernel) = %v, want ErrPortInUse", err)
	}
	for _, k := range []packet.Key{
		packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, 22), remote),
		packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(localIP, 23), remote),
	} {
		if _, err := r.sw.Register(r.ports[0], k, flow.Connected); err != nil {
			t.Errorf("Register(%v) = %v", k, err)
		}
	}
}

// Test 1: interleaved flows of one channel come out grouped per flow, in
// order within each flow; flows of two channels each reach their own.
func TestGroupedPerFlow(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{}, channel.Options{})
	a := r.register(t, 0, 1000, 53)
	r.register(t, 0, 1001, 53)
	r.register(t, 1, 2000, 80)
	r.write(t,
		udpFrame(t, 1000, 53, "A1", 0),
		udpFrame(t, 1001, 53, "B1", 0),
		udpFrame(t, 2000, 80, "C1", 0),
		udpFrame(t, 1000, 53, "A2", 0),
		udpFrame(t, 1001, 53, "B2", 0),
		udpFrame(t, 2000, 80, "C2", 0),
		udpFrame(t, 1000, 53, "A3", 0),
	)
	r.rxOnce(t, 7)
	if got, want := r.drain(t, 0), []string{"A1", "A2", "A3", "B1", "B2"}; !equal(got, want) {
		t.Errorf("channel 0 got %v, want %v", got, want)
	}
	if got, want := r.drain(t, 1), []string{"C1", "C2"}; !equal(got, want) {
		t.Errorf("channel 1 got %v, want %v", got, want)
	}
	st := r.sw.Stats()
	if st.Packets != 7 || st.Batches != 1 || st.FlowBatches != 3 || st.Deliveries != 2 || st.Delivered != 7 {
		t.Errorf("stats %+v", st)
	}
	if c := a.Counters(); c.PacketsIn != 3 || c.BytesIn == 0 {
		t.Errorf("flow A counters %+v", c)
	}
}

// Test 2: one Deliver per channel per input batch, and at most one
// notification, also while the app is blocked in Wait.
func TestOneNotificationPerBatch(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{}, channel.Options{})
	for f := range uint16(4) {
		r.register(t, 0, 1000+f, 53)
		r.register(t, 1, 2000+f, 80)
	}
	// Each app waits in its own goroutine, then drains; the main goroutine
	// owns the switch and the channels' nexus ends.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	received := make([]chan int, 2)
	for i := range 2 {
		received[i] = make(chan int, 1024)
		go func() {
			bufs := make([]channel.Buf, 64)
			for ctx.Err() == nil {
				if err := r.apps[i].Wait(0); err != nil {
					done <- err
					return
				}
				n, err := r.apps[i].Receive(bufs)
				if err != nil {
					done <- err
					return
				}
				if n > 0 {
					r.apps[i].Free(bufs[:n])
					received[i] <- n
				}
			}
			done <- nil
		}()
	}
	sawNotify := make([]bool, 2)
	total := make([]int, 2)
	for batch := 0; batch < 10000 && !(sawNotify[0] && sawNotify[1] && batch >= 10); batch++ {
		var frames [][]byte
		for f := range uint16(4) { // 16 packets, 4 flows per channel, interleaved
			for c := range 2 {
				for range 2 {
					frames = append(frames, udpFrame(t, 1000*uint16(c+1)+f, []uint16{53, 80}[c], "x", 0))
				}
			}
		}
		r.write(t, frames...)
		var before [2]channel.Counters
		for c := range 2 {
			before[c] = r.chans[c].Counters()
		}
		d0 := r.sw.Stats().Deliveries
		r.rxOnce(t, len(frames))
		if d := r.sw.Stats().Deliveries - d0; d != 2 {
			t.Fatalf("batch %d: %d Deliver calls for 2 channels", batch, d)
		}
		for c := range 2 {
			after := r.chans[c].Counters()
			if after.RxPackets-before[c].RxPackets != 8 {
				t.Fatalf("batch %d channel %d: %d packets delivered, want 8", batch, c, after.RxPackets-before[c].RxPackets)
			}
			switch d := after.Notifications - before[c].Notifications; d {
			case 0: // the app was not armed (busy draining): no signal needed
			case 1:
				sawNotify[c] = true
			default:
				t.Fatalf("batch %d channel %d: %d notifications", batch, c, d)
			}
			// Wait until the app drained this batch, so the next one
			// finds it back in Wait (or about to be).
			for total[c] < 8*(batch+1) {
				total[c] += <-received[c]
			}
			r.chans[c].Sync()
		}
		runtime.Gosched()
	}
	if !sawNotify[0] || !sawNotify[1] {
		t.Errorf("no batch found an app waiting: %v", sawNotify)
	}
	cancel()
	for c := range 2 {
		r.chans[c].Close()
	}
	for range 2 {
		if err := <-done; err != nil && !errors.Is(err, channel.ErrDefunct) {
			t.Error(err)
		}
	}
}

// Test 3: packets differing only in the source port are different flows,
// batched apart; only registered ones are delivered.
func TestSourcePortSplitsFlows(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{})
	x := r.register(t, 0, 1000, 53)
	y := r.register(t, 0, 1001, 53)
	r.write(t,
		udpFrame(t, 1000, 53, "X1", 0),
		udpFrame(t, 1001, 53, "Y1", 0),
		udpFrame(t, 1002, 53, "Z1", 0), // not registered
		udpFrame(t, 1000, 53, "X2", 0),
		udpFrame(t, 1001, 53, "Y2", 0),
	)
	r.rxOnce(t, 5)
	if got, want := r.drain(t, 0), []string{"X1", "X2", "Y1", "Y2"}; !equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	st := r.sw.Stats()
	if st.FlowBatches != 2 || st.NoFlow != 1 || st.Delivered != 4 {
		t.Errorf("stats %+v", st)
	}
	if x.Counters().PacketsIn != 2 || y.Counters().PacketsIn != 2 {
		t.Errorf("flow counters x %+v y %+v", x.Counters(), y.Counters())
	}
}

// Test 4: no flow, ARP and malformed frames never reach a channel; each is
// counted, malformed ones per reason.
func TestDrops(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{})
	r.register(t, 0, 1000, 53)
	good := udpFrame(t, 1000, 53, "ok", 0)
	truncIPv4 := append([]byte(nil), good[:14+10]...) // IPv4 header cut short
	badEther := append([]byte(nil), good...)          // EtherType 0x88b5 (local experimental)
	badEther[12], badEther[13] = 0x88, 0xb5
	badUDPLen := append([]byte(nil), good...) // UDP length 4 < 8
	badUDPLen[14+20+4], badUDPLen[14+20+5] = 0, 4
	arp := make([]byte, 14+28) // an ARP request: the host port's business
	copy(arp, good[:12])
	arp[12], arp[13] = 0x08, 0x06
	copy(arp[14:], []byte{0, 1, 8, 0, 6, 4, 0, 1})
	r.write(t,
		udpFrame(t, 1000, 9999, "nf1", 0), // no flow: wrong local port
		truncIPv4,
		badEther,
		good,
		badUDPLen,
		arp,
		udpFrame(t, 4242, 53, "nf2", 0), // no flow: unknown remote
	)
	r.rxOnce(t, 7)
	if got := r.drain(t, 0); !equal(got, []string{"ok"}) {
		t.Errorf("channel got %v, want only [ok]", got)
	}
	st := r.sw.Stats()
	if st.NoFlow != 3 {
		t.Errorf("NoFlow = %d, want 3 (two unknown flows and ARP)", st.NoFlow)
	}
	var want [packet.NumReasons]uint64
	want[packet.ReasonTruncatedIPv4] = 1
	want[packet.ReasonUnsupportedEtherType] = 1
	want[packet.ReasonBadUDPLength] = 1
	if st.ParseDrops != want {
		t.Errorf("ParseDrops = %v, want %v", st.ParseDrops, want)
	}
	if st.Delivered != 1 || st.Deliveries != 1 {
		t.Errorf("stats %+v", st)
	}
}

// A batch with nothing deliverable calls no Deliver at all.
func TestNoDeliverWhenNothingStaged(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{})
	r.write(t, udpFrame(t, 1000, 53, "nf", 0))
	r.rxOnce(t, 1)
	if n, err := r.sw.RxOnce(); n != 0 || err != nil {
		t.Errorf("idle RxOnce = %d, %v", n, err)
	}
	if st := r.sw.Stats(); st.Deliveries != 0 || st.Batches != 1 || st.NoFlow != 1 {
		t.Errorf("stats %+v", st)
	}
}

// Test 5: a per-flow limit of 4 releases 10 packets of one flow in 3 flow
// batches, in order, still in one Deliver.
func TestFlowBatchLimit(t *testing.T) {
	r := newRig(t, flowswitch.Options{FlowBatchLimit: 4}, channel.Options{})
	r.register(t, 0, 1000, 53)
	var frames [][]byte
	var want []string
	for i := range 10 {
		tag := fmt.Sprintf("p%d", i)
		frames = append(frames, udpFrame(t, 1000, 53, tag, 0))
		want = append(want, tag)
	}
	r.write(t, frames...)
	r.rxOnce(t, 10)
	if got := r.drain(t, 0); !equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if st := r.sw.Stats(); st.FlowBatches != 3 || st.Deliveries != 1 || st.Delivered != 10 {
		t.Errorf("stats %+v", st)
	}
}

// Test 5b: with two flows interleaved and a limit of 3, each flow's batch
// is released the moment it reaches the limit, before the end of the input
// batch: A's first three packets reach the ring before any of B's, B's
// three before A's fourth. Order within each flow is kept.
func TestFlowBatchLimitReleasesAtLimit(t *testing.T) {
	r := newRig(t, flowswitch.Options{FlowBatchLimit: 3}, channel.Options{})
	r.register(t, 0, 1000, 53)
	r.register(t, 0, 1001, 53)
	r.write(t,
		udpFrame(t, 1000, 53, "A1", 0),
		udpFrame(t, 1001, 53, "B1", 0),
		udpFrame(t, 1000, 53, "A2", 0),
		udpFrame(t, 1001, 53, "B2", 0),
		udpFrame(t, 1000, 53, "A3", 0), // A reaches the limit: released
		udpFrame(t, 1000, 53, "A4", 0),
		udpFrame(t, 1001, 53, "B3", 0), // B reaches the limit: released
		udpFrame(t, 1001, 53, "B4", 0),
		udpFrame(t, 1000, 53, "A5", 0),
	)
	r.rxOnce(t, 9)
	want := []string{"A1", "A2", "A3", "B1", "B2", "B3", "A4", "A5", "B4"}
	if got := r.drain(t, 0); !equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if st := r.sw.Stats(); st.FlowBatches != 4 || st.Deliveries != 1 || st.Delivered != 9 {
		t.Errorf("stats %+v", st)
	}
}

// The switch stamps each delivered buffer's user metadata with its flow's
// ID and clears the rest, whatever the buffer held before (an app writes
// garbage into buffers it frees); super packets are stamped too.
func TestRxMetadataStamped(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, bigBufs)
	a := r.register(t, 0, 1000, 53)
	b := r.register(t, 0, 1001, 53)
	r.registerTCP(t, 0, 5000, 80)
	var tcpID [16]byte
	r.sw.Do(func() {
		k := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(localIP, 80), netip.AddrPortFrom(remoteIP, 5000))
		tcpID = r.sw.Table().Lookup(&k).ID()
	})
	// Dirty the metadata of every buffer the app is handed ahead.
	r.chans[0].Sync()
	bufs := make([]channel.Buf, 256)
	n, err := r.apps[0].Alloc(bufs)
	if err != nil || n == 0 {
		t.Fatalf("alloc %d, %v", n, err)
	}
	for _, x := range bufs[:n] {
		m, err := r.apps[0].Meta(x.Index)
		if err != nil {
			t.Fatal(err)
		}
		for k := range m {
			m[k] = 0xa5
		}
	}
	if _, err := r.apps[0].Free(bufs[:n]); err != nil {
		t.Fatal(err)
	}
	r.chans[0].Sync()
	in := [][]byte{udpFrame(t, 1000, 53, "a", 0), udpFrame(t, 1001, 53, "b", 0), udpFrame(t, 1000, 53, "a", 0)}
	in = append(in, frames(t, runOf(3, 500))...) // one super packet
	r.write(t, in...)
	r.rxOnce(t, len(in))
	want := [][16]byte{a.ID(), a.ID(), b.ID(), tcpID}
	got := 0
	for {
		n, err := r.apps[0].Receive(bufs)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		for _, x := range bufs[:n] {
			m, err := r.apps[0].Meta(x.Index)
			if err != nil {
				t.Fatal(err)
			}
			if got >= len(want) {
				t.Fatalf("more than %d packets", len(want))
			}
			var rest [16]byte
			if [16]byte(m[channel.RxMetaFlowIDOff:]) != want[got] || [16]byte(m[16:32]) != rest {
				t.Errorf("packet %d: metadata %x, want the flow ID %x then zeros", got, m, want[got])
			}
			got++
		}
		r.apps[0].Free(bufs[:n])
	}
	if got != len(want) {
		t.Errorf("%d packets, want %d", got, len(want))
	}
}

// Test 6: a full RX ring tail-drops only its own excess.
func TestRxRingOverflow(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{RxSize: 8}, channel.Options{})
	r.register(t, 0, 1000, 53)
	r.register(t, 1, 2000, 80)
	var frames [][]byte
	var wantA, wantB []string
	for i := range 20 {
		tag := fmt.Sprintf("a%d", i)
		frames = append(frames, udpFrame(t, 1000, 53, tag, 0))
		if i < 8 {
			wantA = append(wantA, tag)
		}
		if i%4 == 0 { // interleave the other channel's 5 packets
			tag := fmt.Sprintf("b%d", i/4)
			frames = append(frames, udpFrame(t, 2000, 80, tag, 0))
			wantB = append(wantB, tag)
		}
	}
	allocs := r.chans[0].Pool().Stats().Allocs
	r.write(t, frames...)
	r.rxOnce(t, 25)
	if got := r.chans[0].Pool().Stats().Allocs - allocs; got != 8 {
		t.Errorf("small ring's pool handed out %d buffers, want 8: what the ring cannot take is refused before the copy", got)
	}
	if got := r.drain(t, 0); !equal(got, wantA) {
		t.Errorf("small ring got %v, want %v", got, wantA)
	}
	if got := r.drain(t, 1); !equal(got, wantB) {
		t.Errorf("other channel got %v, want %v", got, wantB)
	}
	st := r.sw.Stats()
	if st.RxRingDrops != 12 || st.Delivered != 13 {
		t.Errorf("stats %+v", st)
	}
	if c := r.chans[0].Counters(); c.RxDrops != 12 {
		t.Errorf("channel 0 RxDrops = %d", c.RxDrops)
	}
	if c := r.chans[1].Counters(); c.RxDrops != 0 {
		t.Errorf("channel 1 RxDrops = %d", c.RxDrops)
	}
}

// Test 7: no allocation in steady state, per packet or per batch.
func TestRxNoAllocs(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{}, channel.Options{})
	const flows = 8
	var frames [][]byte
	for f := range uint16(flows) {
		r.register(t, int(f%2), 1000+f, 53+f%2) // a local port belongs to one port
	}
	for i := range 32 {
		f := uint16(i % flows)
		frames = append(frames, udpFrame(t, 1000+f, 53+f%2, "z", 0))
	}
	const runs = 100
	for range runs + 10 { // AllocsPerRun runs once more to warm up
		r.write(t, frames...)
	}
	bufs := make([]channel.Buf, 64)
	step := func() {
		if n, err := r.sw.RxOnce(); n != 32 || err != nil {
			t.Fatalf("RxOnce = %d, %v", n, err)
		}
		for c := range 2 { // the app side drains, frees; the nexus syncs
			for {
				n, _ := r.apps[c].Receive(bufs)
				if n == 0 {
					break
				}
				r.apps[c].Free(bufs[:n])
			}
			r.chans[c].Sync()
		}
	}
	for range 5 {
		step()
	}
	if a := testing.AllocsPerRun(runs, step); a != 0 {
		t.Errorf("%v allocations per batch of 32", a)
	}
}

// drive runs the datapath in a goroutine as nexus.Nexus's worker does, one
// Round after another, each followed by every channel's Sync (a port whose
// channel turned defunct is removed), until stop is called; stop returns
// the first error Round met. Where the worker sleeps on the link and the
// apps, drive sleeps on the link alone, for at most Round's wait (the
// switch's IdleWait when nothing is due).
func drive(sw *flowswitch.Switch, link netif.Link, ports []flow.PortID, chans []*channel.Channel) (stop func() error) {
	quit, done := make(chan struct{}), make(chan error, 1)
	live := slices.Clone(chans)
	defunct := make([]int, 0, len(live))
	syncAll := func() {
		for i, ch := range live {
			if ch != nil && ch.Sync() != nil {
				defunct = append(defunct, i)
			}
		}
	}
	go func() {
		for {
			select {
			case <-quit:
				done <- nil
				return
			default:
			}
			moved, wait, err := sw.Round(flowswitch.ReadDevice)
			if err != nil {
				done <- err
				return
			}
			// Under the switch's lock: Snapshot, from other
			// goroutines, reads the channels' counters. (The nexus
			// takes its snapshots on the worker instead.)
			defunct = defunct[:0]
			sw.Do(syncAll)
			for _, i := range defunct {
				sw.RemovePort(ports[i])
				live[i] = nil
			}
			if moved == 0 && wait > 0 {
				if err := link.Wait(wait); err != nil {
					done <- err
					return
				}
			}
		}
	}()
	return func() error {
		close(quit)
		return <-done
	}
}

// Round, driven as the nexus drives it, delivers what arrives, in order.
func TestRound(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{})
	r.register(t, 0, 1000, 53)
	stop := drive(r.sw, r.dev, r.ports, r.chans)
	const total = 100
	for i := range total {
		r.write(t, udpFrame(t, 1000, 53, fmt.Sprintf("r%d", i), 0))
	}
	bufs := make([]channel.Buf, 64)
	got := 0
	for got < total {
		if err := r.apps[0].Wait(0); err != nil {
			t.Fatal(err)
		}
		n, err := r.apps[0].Receive(bufs)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bufs[:n] {
			var p packet.Parsed
			if err := packet.Parse(b.Data, packet.RawIP, &p); err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("r%d", got)
			if tag := string(b.Data[p.PayloadOff:][:len(want)]); tag != want {
				t.Fatalf("packet %d has tag %q", got, tag)
			}
			got++
		}
		r.apps[0].Free(bufs[:n])
	}
	if err := stop(); err != nil {
		t.Errorf("Round = %v", err)
	}
	if st := r.sw.Stats(); st.Delivered != total {
		t.Errorf("stats %+v", st)
	}
}

// Round returns the link's error once the link is closed.
func TestRoundLinkClosed(t *testing.T) {
	r := newRig(t, flowswitch.Options{})
	r.peer.Close()
	if _, _, err := r.sw.Round(flowswitch.ReadDevice); !errors.Is(err, netif.ErrClosed) {
		t.Errorf("Round = %v, want ErrClosed", err)
	}
}
