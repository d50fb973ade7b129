package flowswitch_test

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
)

// A snapshot counts per flow, per port, per ring and per drop reason; its
// JSON has every drop reason, zero or not; its table shows the non-zero
// ones only.
func TestSnapshot(t *testing.T) {
	r, _ := newTxRig(t)
	f := r.txFlows(t)
	// Receive: 3 packets of udp0 (port 0), 1 of no flow, 1 malformed.
	rx := func(sport, dport uint16, tag string) []byte {
		return udpFrame(t, sport, dport, tag, 0)
	}
	good := rx(6000, 5000, "in")
	bad := bytes.Clone(good[:14+10])
	r.write(t, good, good, good, rx(6000, 5999, "none"), bad)
	r.rxOnce(t, 5)
	r.drain(t, 0)
	// Transmit: 2 valid packets of udp0, 1 spoofed source port.
	spoof := udp0Pkt(100)
	spoof.sport = 5999
	r.send(t, 0, f.udp0.ID(), udp0Pkt(100).build(t), udp0Pkt(200).build(t), spoof.build(t))
	r.tx(t, 0)

	snap := r.sw.Snapshot()
	if tt := snap.Totals; tt.Packets != 5 || tt.Delivered != 3 || tt.TxPackets != 2 || tt.TxBytes != 300 || tt.ActiveFlows != 4 {
		t.Errorf("totals %+v", tt)
	}
	if len(snap.Ports) != 2 {
		t.Fatalf("%d ports", len(snap.Ports))
	}
	p0 := snap.Ports[0]
	if p0.Port != r.ports[0] || p0.Flows != 3 || p0.Delivered != 3 || p0.TxPackets != 2 || p0.TxBytes != 300 || p0.TxDrops != 1 ||
		p0.Ring.RxPackets != 3 || p0.Ring.TxPackets != 3 || p0.Channel == "" {
		t.Errorf("port 0: %+v", p0)
	}
	var udp0 *flowswitch.FlowStats
	for i := range snap.Flows {
		if snap.Flows[i].Token == f.udp0.Token() {
			udp0 = &snap.Flows[i]
		}
	}
	id := f.udp0.ID()
	if udp0 == nil || udp0.PacketsIn != 3 || udp0.PacketsOut != 2 || udp0.BytesOut != 300 || udp0.Port != r.ports[0] ||
		udp0.Kind != "connected" || udp0.Key != f.udp0.Key().String() || !strings.EqualFold(udp0.ID, hexOf(id[:])) {
		t.Errorf("flow udp0: %+v", udp0)
	}
	want := map[string]uint64{
		"rx/no_flow": 1,
		"rx/parse_" + packet.ReasonTruncatedIPv4.String(): 1,
		"tx/src_port": 1,
	}
	seen := map[string]bool{}
	places := map[string]bool{flowswitch.PlaceSwitch: true, flowswitch.PlacePort: true, flowswitch.PlaceLink: true}
	for _, d := range snap.Drops {
		if !places[d.Place] {
			t.Errorf("drop %s/%s has place %q", d.Dir, d.Reason, d.Place)
		}
		k := d.Dir + "/" + d.Reason
		if seen[k] {
			t.Errorf("drop reason %s twice", k)
		}
		seen[k] = true
		if d.Packets != want[k] {
			t.Errorf("drop %s = %d, want %d", k, d.Packets, want[k])
		}
	}
	// Every reason is listed: each parse reason, the other RX reasons,
	// every TxDrops field, the AQM's, the device's and the resolver's two,
	// and the link's; the reassembler's 8.
	if n := int(packet.NumReasons) - 1 + 9 + 8 + reflect.TypeFor[flowswitch.TxDrops]().NumField() + 7 + 1; len(snap.Drops) != n {
		t.Errorf("%d drop reasons, want %d", len(snap.Drops), n)
	}

	js, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"reason":"torn_down","packets":0`, `"reason":"syn_rate","packets":0`,
		`"place":"switch","reason":"parse_bad_udp_length","packets":0`, `"place":"link","reason":"link_rx_lost"`,
		`"rx_delivered":3`, `"packets_in":3`, `"link":{"RxPackets":5`} {
		if !bytes.Contains(js, []byte(k)) {
			t.Errorf("JSON lacks %s", k)
		}
	}

	// The switch's Stats too name each parse reason in JSON.
	js, err = json.Marshal(r.sw.Stats())
	if err != nil {
		t.Fatal(err)
	}
	if k := `"` + packet.ReasonTruncatedIPv4.String() + `":1`; !bytes.Contains(js, []byte(`"ParseDrops":{`)) || !bytes.Contains(js, []byte(k)) {
		t.Errorf("Stats JSON lacks ParseDrops by name (%s): %.300s", k, js)
	}

	var tb strings.Builder
	if err := snap.WriteTable(&tb, -1); err != nil {
		t.Fatal(err)
	}
	out := tb.String()
	for _, k := range []string{"src_port", "no_flow", "truncated_ipv4", f.udp0.Key().String(), "rx ring drops"} {
		if !strings.Contains(out, k) {
			t.Errorf("table lacks %q:\n%s", k, out)
		}
	}
	for _, k := range []string{"torn_down", "syn_rate"} {
		if strings.Contains(out, k) {
			t.Errorf("table shows the zero reason %q", k)
		}
	}
	tb.Reset()
	if err := snap.WriteTable(&tb, 1); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tb.String(), "(3 more flows)") || !strings.Contains(tb.String(), f.udp0.Key().String()) {
		t.Errorf("table of the busiest flow:\n%s", tb.String())
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	var sb strings.Builder
	for _, c := range b {
		sb.WriteByte(digits[c>>4])
		sb.WriteByte(digits[c&15])
	}
	return sb.String()
}

// Every TxDrops field is in List, and so in Total, Reasons and the
// snapshot's drops, under a name of its own: a check added to the struct
// but not to List fails here. Each field gets a distinct power of two, so
// a field left out, counted twice or named after another is caught.
func TestTxDropsCountsEveryField(t *testing.T) {
	var d flowswitch.TxDrops
	v := reflect.ValueOf(&d).Elem()
	want := map[uint64]string{} // value -> field
	var total uint64
	for i := range v.NumField() {
		f := v.Field(i)
		if f.Kind() != reflect.Uint64 {
			t.Fatalf("TxDrops.%s is %v: Total sums uint64 counters only", v.Type().Field(i).Name, f.Kind())
		}
		x := uint64(1) << i
		f.SetUint(x)
		want[x] = v.Type().Field(i).Name
		total += x
	}
	if got := d.Total(); got != total {
		t.Errorf("Total = %#x, want %#x (every field once)", got, total)
	}
	reasons := d.Reasons()
	if len(reasons) != v.NumField() || len(d.List()) != v.NumField() {
		t.Errorf("%d reasons, %d listed, want %d (one per field, names distinct)", len(reasons), len(d.List()), v.NumField())
	}
	seen := map[uint64]bool{}
	for name, n := range reasons {
		field, ok := want[n]
		if !ok || seen[n] {
			t.Errorf("reason %q = %#x: not exactly one field's value", name, n)
		}
		seen[n] = true
		// The name is the field's in snake case (SYNRate: syn_rate).
		if flat := strings.ReplaceAll(name, "_", ""); !strings.EqualFold(flat, field) {
			t.Errorf("reason %q holds field %s", name, field)
		}
	}
}

// tapLink is a memif link that says the kernel gets a copy of each frame,
// as AF_PACKET's does.
type tapLink struct{ netif.Link }

func (tapLink) KernelGetsCopies() bool { return true }

// A frame of no flow, or of an EtherType the switch does not parse, read
// from a netif.KernelTap is the kernel's: counted as passed (KernelKept,
// Totals.KernelPassed), not as a drop. From any other link without a host
// port it is a no_flow or parse drop. A capture shows each where it went.
func TestSnapshotKernelKept(t *testing.T) {
	for _, tap := range []bool{false, true} {
		a, b, err := memif.NewPair(memif.Options{QueueLen: 64})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		var l netif.Link = a
		if tap {
			l = tapLink{a}
		}
		sw, err := flowswitch.New(flowswitch.Options{Link: l, LocalAddrs: []netip.Addr{localIP}})
		if err != nil {
			t.Fatal(err)
		}
		ring := newCapture(t, sw, capture.Options{})
		f := udpFrame(t, 6000, 5000, "kernel's", 0)
		lldp := bytes.Clone(f)
		lldp[12], lldp[13] = 0x88, 0xcc // an EtherType only the kernel speaks
		if n, err := b.Write([][]byte{f, f, f, lldp}); n != 4 || err != nil {
			t.Fatalf("write: %d, %v", n, err)
		}
		if n, err := sw.RxOnce(); n != 4 || err != nil {
			t.Fatalf("RxOnce: %d, %v", n, err)
		}
		st, snap := sw.Stats(), sw.Snapshot()
		var noFlow, ether uint64
		for _, d := range snap.Drops {
			switch d.Dir + "/" + d.Reason {
			case "rx/no_flow":
				noFlow = d.Packets
			case "rx/parse_" + packet.ReasonUnsupportedEtherType.String():
				ether = d.Packets
			}
		}
		want := [4]uint64{0, 0, 3, 1} // kept, passed, no_flow and ethertype drops
		if tap {
			want = [4]uint64{4, 4, 0, 0}
		}
		if got := [4]uint64{st.KernelKept, snap.Totals.KernelPassed, noFlow, ether}; got != want || st.NoFlow != noFlow {
			t.Errorf("tap=%v: kept, passed, no_flow, ethertype = %v, want %v (NoFlow %d)", tap, got, want, st.NoFlow)
		}
		// A capture sees the kernel's frames at kernel-rx, the drops at
		// drop-rx.
		recs := readCapture(ring)
		kernel, dropped := 0, 0
		for _, r := range recs {
			switch r.point {
			case capture.KernelRx:
				kernel++
			case capture.DropRx:
				dropped++
			}
		}
		if wantKernel := int(want[0]); kernel != wantKernel || dropped != 4-wantKernel {
			t.Errorf("tap=%v: captured %d at kernel-rx, %d at drop-rx; want %d and %d", tap, kernel, dropped, wantKernel, 4-wantKernel)
		}
		if snap.Link.RxPackets != 4 {
			t.Errorf("tap=%v: snapshot's link read %d frames, want 4", tap, snap.Link.RxPackets)
		}
	}
}
