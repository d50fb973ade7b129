package flowswitch_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
	"github.com/skylane/skylane/pool"
)

// bigBufs is a channel whose 16 KiB buffers let super packets reach the
// default merge limit.
var bigBufs = channel.Options{Pool: pool.Options{BufferSize: 16384, SegmentSize: 65536}}

// seg describes one TCP segment from remote:sport to local:dport.
type seg struct {
	sport, dport uint16
	seq          uint32
	n            int // payload bytes; byte k of the payload is byte(seq+k)
	psh, fin     bool
	syn, rst     bool
	urg          bool
	tos          uint8
	noDF         bool
	ipOpt        bool // one IPv4 NOP option (padded to 4 bytes)
	tsOpt        bool // a 12-byte TCP timestamp option (NOP NOP TS)
	window       uint16
	corrupt      bool // flip a payload byte after the checksums
	v6           bool // IPv6: remoteIP6 → localIP6 (tos is the traffic class)
}

func payloadOf(seq uint32, n int) []byte {
	b := make([]byte, n)
	for k := range b {
		b[k] = byte(seq + uint32(k))
	}
	return b
}

func (s seg) frame(t testing.TB) []byte {
	t.Helper()
	src, dst := remoteIP, localIP
	if s.v6 {
		src, dst = remoteIP6, localIP6
	}
	f := packettest.Frame{
		Src: netip.AddrPortFrom(src, s.sport), Dst: netip.AddrPortFrom(dst, s.dport),
		Proto: packet.ProtoTCP, TOS: s.tos, ID: uint16(s.seq), NoDF: s.noDF,
		Seq: s.seq, Ack: 777, Window: s.window, Payload: payloadOf(s.seq, s.n),
	}
	if f.Window == 0 {
		f.Window = 1000
	}
	if s.ipOpt {
		f.IPOptions = packettest.IPv4NOPs(4)
	}
	if s.tsOpt {
		f.TCPOptions = packettest.TCPTimestamp(0, 0)
	}
	for _, fl := range []struct {
		on   bool
		flag packet.TCPFlags
	}{{!s.syn, packet.TCPAck}, {s.psh, packet.TCPPsh}, {s.fin, packet.TCPFin}, {s.syn, packet.TCPSyn},
		{s.rst, packet.TCPRst}, {s.urg, packet.TCPUrg}} {
		if fl.on {
			f.Flags |= fl.flag
		}
	}
	b := f.Bytes()
	if s.corrupt {
		b[len(b)-1] ^= 0x40
	}
	return b
}

func (r *rig) registerTCP(t testing.TB, i int, sport, dport uint16) {
	t.Helper()
	r.registerTCPFrom(t, i, netip.AddrPortFrom(remoteIP, sport), netip.AddrPortFrom(localIP, dport))
}

// registerTCPFrom adds the TCP 5-tuple flow local ← remote for port i.
func (r *rig) registerTCPFrom(t testing.TB, i int, remote, local netip.AddrPort) {
	t.Helper()
	k := packet.MakeKey(packet.ProtoTCP, local, remote)
	if _, err := r.sw.Register(r.ports[i], k, flow.Connected); err != nil {
		t.Fatal(err)
	}
}

// rxPkt is a packet an app received.
type rxPkt struct {
	data    []byte
	ip      *layers.IPv4 // nil if IPv6
	ip6     *layers.IPv6 // nil if IPv4
	tcp     *layers.TCP  // nil if not TCP
	payload []byte
}

// drainPkts receives and frees everything on app i's RX ring.
func (r *rig) drainPkts(t testing.TB, i int) []rxPkt {
	t.Helper()
	var out []rxPkt
	bufs := make([]channel.Buf, 64)
	for {
		n, err := r.apps[i].Receive(bufs)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return out
		}
		for _, b := range bufs[:n] {
			if b.Flags != channel.FlagCsumValid { // the rig's memif wire is trusted
				t.Errorf("buffer flags %#x", b.Flags)
			}
			data := bytes.Clone(b.Data)
			first := layers.LayerTypeIPv4
			if len(data) > 0 && data[0]>>4 == 6 {
				first = layers.LayerTypeIPv6
			}
			pk := gopacket.NewPacket(data, first, gopacket.Default)
			if el := pk.ErrorLayer(); el != nil {
				t.Fatalf("decode: %v", el.Error())
			}
			p := rxPkt{data: data}
			if first == layers.LayerTypeIPv4 {
				p.ip = pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
				if int(p.ip.Length) != len(data) {
					t.Errorf("IP length %d, packet %d bytes", p.ip.Length, len(data))
				}
			} else {
				p.ip6 = pk.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
				if 40+int(p.ip6.Length) != len(data) {
					t.Errorf("IPv6 payload length %d, packet %d bytes", p.ip6.Length, len(data))
				}
			}
			if l, ok := pk.Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
				p.tcp = l
				p.payload = l.Payload
			}
			out = append(out, p)
		}
		if _, err := r.apps[i].Free(bufs[:n]); err != nil {
			t.Fatal(err)
		}
		r.chans[i].Sync()
	}
}

// checksumsOK reports whether p's IPv4 header and TCP checksums are right,
// by serializing its layers again with gopacket computing the checksums.
func checksumsOK(t testing.TB, p rxPkt) bool {
	t.Helper()
	tcp := *p.tcp
	var ipl gopacket.SerializableLayer
	if p.ip != nil {
		ip := *p.ip
		if err := tcp.SetNetworkLayerForChecksum(&ip); err != nil {
			t.Fatal(err)
		}
		ipl = &ip
	} else {
		ip6 := *p.ip6
		if err := tcp.SetNetworkLayerForChecksum(&ip6); err != nil {
			t.Fatal(err)
		}
		ipl = &ip6
	}
	sb := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(sb, gopacket.SerializeOptions{ComputeChecksums: true},
		ipl, &tcp, gopacket.Payload(p.payload))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(sb.Bytes(), p.data)
}

// mergeRig is a rig with one port whose TCP flow is 5000 → 80.
func mergeRig(t testing.TB, opts flowswitch.Options, ch channel.Options) *rig {
	r := newRig(t, opts, ch)
	r.registerTCP(t, 0, 5000, 80)
	return r
}

// runOf returns n in-order segments of size bytes from seq 1000.
func runOf(n, size int) []seg {
	s := make([]seg, n)
	for k := range s {
		s[k] = seg{sport: 5000, dport: 80, seq: uint32(1000 + k*size), n: size}
	}
	return s
}

func frames(t testing.TB, ss []seg) [][]byte {
	var f [][]byte
	for _, s := range ss {
		f = append(f, s.frame(t))
	}
	return f
}

func TestMergeInOrder(t *testing.T) {
	for _, size := range []int{1000, 999} { // 999: payloads at odd offsets
		r := mergeRig(t, flowswitch.Options{}, bigBufs)
		ss := runOf(8, size)
		ss[3].psh = true
		ss[7].window = 4242
		r.write(t, frames(t, ss)...)
		r.rxOnce(t, 8)
		got := r.drainPkts(t, 0)
		if len(got) != 1 {
			t.Fatalf("size %d: %d packets, want 1 super packet", size, len(got))
		}
		p := got[0]
		if !bytes.Equal(p.payload, payloadOf(1000, 8*size)) {
			t.Errorf("size %d: payload of %d bytes differs", size, len(p.payload))
		}
		if p.ip.Length != uint16(20+20+8*size) || p.ip.Id != 1000 || p.ip.Flags != layers.IPv4DontFragment {
			t.Errorf("size %d: IP header %+v", size, p.ip)
		}
		if p.tcp.Seq != 1000 || p.tcp.Ack != 777 || !p.tcp.ACK || !p.tcp.PSH || p.tcp.FIN || p.tcp.Window != 4242 {
			t.Errorf("size %d: TCP header seq %d ack %d flags ACK %v PSH %v window %d",
				size, p.tcp.Seq, p.tcp.Ack, p.tcp.ACK, p.tcp.PSH, p.tcp.Window)
		}
		if !checksumsOK(t, p) {
			t.Errorf("size %d: bad checksums (ip %#x tcp %#x)", size, p.ip.Checksum, p.tcp.Checksum)
		}
		st := r.sw.Stats()
		if st.SuperPackets != 1 || st.Merged != 7 || st.Delivered != 1 || st.FlowBatches != 1 {
			t.Errorf("size %d: stats %+v", size, st)
		}
	}
}

// IPv6 segments merge as IPv4 ones do: the payload length covers the
// merged payload (there is no header checksum), and the TCP checksum over
// the IPv6 pseudo header is right. A changed traffic class stops the merge.
func TestMergeIPv6(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, bigBufs)
	r.registerTCPFrom(t, 0, netip.AddrPortFrom(remoteIP6, 5000), netip.AddrPortFrom(localIP6, 80))
	ss := runOf(6, 999) // odd sizes: payloads at odd offsets of the sum
	for k := range ss {
		ss[k].v6 = true
	}
	ss[2].psh = true
	ss[3].window = 777
	ss[4].tos, ss[5].tos = 0x10, 0x10 // traffic class change: a new run
	r.write(t, frames(t, ss)...)
	r.rxOnce(t, len(ss))
	got := r.drainPkts(t, 0)
	if len(got) != 2 {
		t.Fatalf("%d packets, want 2 super packets", len(got))
	}
	for k, want := range []struct {
		seq    uint32
		n      int
		window uint16
		tc     uint8
	}{{1000, 4 * 999, 777, 0}, {1000 + 4*999, 2 * 999, 1000, 0x10}} {
		p := got[k]
		if p.ip6 == nil || p.tcp == nil {
			t.Fatalf("packet %d: not IPv6/TCP", k)
		}
		if p.tcp.Seq != want.seq || len(p.payload) != want.n || !bytes.Equal(p.payload, payloadOf(want.seq, want.n)) {
			t.Errorf("packet %d: seq %d, %d payload bytes; want %d, %d", k, p.tcp.Seq, len(p.payload), want.seq, want.n)
		}
		if int(p.ip6.Length) != 20+want.n || p.ip6.TrafficClass != want.tc || p.tcp.Window != want.window || !p.tcp.ACK {
			t.Errorf("packet %d: payload length %d, traffic class %#x, window %d", k, p.ip6.Length, p.ip6.TrafficClass, p.tcp.Window)
		}
		if k == 0 && !p.tcp.PSH {
			t.Error("PSH of a merged segment lost")
		}
		if !checksumsOK(t, p) {
			t.Errorf("packet %d: bad TCP checksum %#x", k, p.tcp.Checksum)
		}
	}
	if st := r.sw.Stats(); st.SuperPackets != 2 || st.Merged != 4 {
		t.Errorf("stats %+v", st)
	}
}

// A corrupt segment leaves the super packet's TCP checksum wrong.
func TestMergeKeepsCorruption(t *testing.T) {
	r := mergeRig(t, flowswitch.Options{}, bigBufs)
	ss := runOf(4, 1000)
	ss[2].corrupt = true
	r.write(t, frames(t, ss)...)
	r.rxOnce(t, 4)
	got := r.drainPkts(t, 0)
	if len(got) != 1 {
		t.Fatalf("%d packets, want 1", len(got))
	}
	if checksumsOK(t, got[0]) {
		t.Error("super packet of a corrupt segment has a valid checksum")
	}
}

// Each stop rule ends the run exactly at the offending segment.
func TestMergeStops(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(ss []seg) // on 4 segments of 1000 bytes
		want []int          // payload bytes per delivered packet
		opts flowswitch.Options
		ch   channel.Options
	}{
		{name: "FIN", edit: func(ss []seg) { ss[2].fin = true }, want: []int{2000, 1000, 1000}},
		{name: "SYN", edit: func(ss []seg) { ss[2].syn = true }, want: []int{2000, 1000, 1000}},
		{name: "RST", edit: func(ss []seg) { ss[2].rst = true }, want: []int{2000, 1000, 1000}},
		{name: "URG", edit: func(ss []seg) { ss[2].urg = true }, want: []int{2000, 1000, 1000}},
		{name: "zero payload", edit: func(ss []seg) { ss[2].n = 0; ss[3].seq = ss[2].seq }, want: []int{2000, 0, 1000}},
		{name: "seq gap", edit: func(ss []seg) { ss[2].seq++; ss[3].seq++ }, want: []int{2000, 2000}},
		{name: "seq overlap", edit: func(ss []seg) { ss[2].seq--; ss[3].seq-- }, want: []int{2000, 2000}},
		{name: "TOS", edit: func(ss []seg) { ss[2].tos = 4; ss[3].tos = 4 }, want: []int{2000, 2000}},
		{name: "DF", edit: func(ss []seg) { ss[2].noDF = true; ss[3].noDF = true }, want: []int{2000, 2000}},
		{name: "IP options", edit: func(ss []seg) { ss[2].ipOpt = true }, want: []int{2000, 1000, 1000}},
		{name: "TCP options length", edit: func(ss []seg) { ss[2].tsOpt = true; ss[3].tsOpt = true }, want: []int{2000, 2000}},
		{name: "merge limit", opts: flowswitch.Options{MergeLimit: 40 + 2999}, edit: func([]seg) {}, want: []int{2000, 2000}},
		{name: "limit fits 3", opts: flowswitch.Options{MergeLimit: 40 + 3000}, edit: func([]seg) {}, want: []int{3000, 1000}},
		{name: "default buffers", ch: channel.Options{}, edit: func([]seg) {}, want: []int{2000, 2000}},
		{name: "disabled", opts: flowswitch.Options{MergeLimit: -1}, edit: func([]seg) {}, want: []int{1000, 1000, 1000, 1000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := tc.ch
			if tc.name != "default buffers" {
				ch = bigBufs
			}
			r := mergeRig(t, tc.opts, ch)
			ss := runOf(4, 1000)
			tc.edit(ss)
			r.write(t, frames(t, ss)...)
			r.rxOnce(t, 4)
			got := r.drainPkts(t, 0)
			var lens []int
			next := ss[0].seq
			for k, p := range got {
				lens = append(lens, len(p.payload))
				if !checksumsOK(t, p) {
					t.Errorf("packet %d: bad checksums", k)
				}
				if k > 0 && p.tcp.Seq < next {
					t.Errorf("packet %d: seq %d out of order", k, p.tcp.Seq)
				}
				next = p.tcp.Seq
				if !bytes.Equal(p.payload, payloadOf(p.tcp.Seq, len(p.payload))) {
					t.Errorf("packet %d: payload differs", k)
				}
			}
			if fmt.Sprint(lens) != fmt.Sprint(tc.want) {
				t.Errorf("payload lengths %v, want %v", lens, tc.want)
			}
			st := r.sw.Stats()
			if int(st.Merged) != 4-len(tc.want) {
				t.Errorf("Merged = %d, want %d", st.Merged, 4-len(tc.want))
			}
		})
	}
}

// UDP packets and other flows are not merged into a flow's super packet, and
// each flow's segments are merged on their own.
func TestMergeOtherFlowsUntouched(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, bigBufs, bigBufs)
	r.registerTCP(t, 0, 5000, 80)
	r.registerTCP(t, 1, 6000, 81)
	r.register(t, 0, 1000, 53)
	a := runOf(3, 500)
	b := runOf(3, 700)
	for k := range b {
		b[k].sport, b[k].dport = 6000, 81
	}
	udp := udpFrame(t, 1000, 53, "udp", 300)
	in := [][]byte{a[0].frame(t), b[0].frame(t), udp, a[1].frame(t), b[1].frame(t), a[2].frame(t), udp, b[2].frame(t)}
	r.write(t, in...)
	r.rxOnce(t, len(in))
	got0 := r.drainPkts(t, 0)
	got1 := r.drainPkts(t, 1)
	// Port 0: the TCP flow's batch first (its queue was created first), then the UDP flow's.
	if len(got0) != 3 || got0[0].tcp == nil || len(got0[0].payload) != 1500 ||
		got0[1].tcp != nil || got0[2].tcp != nil {
		t.Fatalf("port 0 got %d packets", len(got0))
	}
	for _, p := range got0[1:] {
		if !bytes.Equal(p.data, udp[14:]) {
			t.Error("UDP packet changed")
		}
	}
	if !checksumsOK(t, got0[0]) || !bytes.Equal(got0[0].payload, payloadOf(1000, 1500)) {
		t.Error("flow A super packet wrong")
	}
	if len(got1) != 1 || len(got1[0].payload) != 2100 || !checksumsOK(t, got1[0]) ||
		!bytes.Equal(got1[0].payload, payloadOf(1000, 2100)) {
		t.Errorf("flow B: %d packets", len(got1))
	}
	if st := r.sw.Stats(); st.SuperPackets != 2 || st.Merged != 4 || st.Delivered != 4 {
		t.Errorf("stats %+v", st)
	}
}

// Segments split by the flow batch limit are not merged across batches.
func TestMergeWithinFlowBatch(t *testing.T) {
	r := mergeRig(t, flowswitch.Options{FlowBatchLimit: 3}, bigBufs)
	r.write(t, frames(t, runOf(8, 100))...)
	r.rxOnce(t, 8)
	var lens []int
	for _, p := range r.drainPkts(t, 0) {
		lens = append(lens, len(p.payload))
	}
	if fmt.Sprint(lens) != fmt.Sprint([]int{300, 300, 200}) {
		t.Errorf("payload lengths %v", lens)
	}
}

func TestMergeLimitOption(t *testing.T) {
	r := newRig(t, flowswitch.Options{})
	_, err := flowswitch.New(flowswitch.Options{Link: r.peer, MergeLimit: flowswitch.MaxMergeLimit + 1})
	if !errors.Is(err, flowswitch.ErrBadOptions) {
		t.Errorf("MergeLimit above max: %v", err)
	}
	if _, err := flowswitch.New(flowswitch.Options{Link: r.peer, MergeLimit: flowswitch.MaxMergeLimit}); err != nil {
		t.Errorf("MergeLimit max: %v", err)
	}
}

// Merging allocates nothing either.
func TestMergeNoAllocs(t *testing.T) {
	r := mergeRig(t, flowswitch.Options{}, bigBufs)
	fr := frames(t, runOf(32, 400))
	const runs = 50
	for range runs + 10 {
		r.write(t, fr...)
	}
	bufs := make([]channel.Buf, 64)
	step := func() {
		if n, err := r.sw.RxOnce(); n != 32 || err != nil {
			t.Fatalf("RxOnce = %d, %v", n, err)
		}
		for {
			n, _ := r.apps[0].Receive(bufs)
			if n == 0 {
				break
			}
			r.apps[0].Free(bufs[:n])
		}
		r.chans[0].Sync()
	}
	for range 5 {
		step()
	}
	if a := testing.AllocsPerRun(runs, step); a != 0 {
		t.Errorf("%v allocations per batch", a)
	}
	if st := r.sw.Stats(); st.SuperPackets == 0 {
		t.Errorf("no merges: %+v", st)
	}
}
