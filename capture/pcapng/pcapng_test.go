package pcapng_test

import (
	"bytes"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/capture/pcapng"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// records are a device frame, its L3 packet delivered to an app, and a
// spoof the transmit checks dropped.
func records() []capture.Record {
	fe := packettest.Frame{Src: netip.MustParseAddrPort("198.19.0.2:6000"), Dst: netip.MustParseAddrPort("198.18.0.1:5000"),
		Proto: packet.ProtoUDP, Payload: []byte("hello"), Size: 100}
	fs := packettest.Frame{Link: packet.RawIP, Src: netip.MustParseAddrPort("198.18.0.9:5000"),
		Dst: netip.MustParseAddrPort("198.19.0.2:6000"), Proto: packet.ProtoUDP, Size: 80}
	eth, spoof := fe.Bytes(), fs.Bytes()
	return []capture.Record{
		{Time: 1_700_000_000_123456789, Point: capture.DeviceRx, Link: packet.Ethernet, Len: len(eth), Data: eth},
		{Time: 1_700_000_000_123457000, Point: capture.AppRx, Link: packet.RawIP, App: "web-3", Len: len(eth) - 14, Data: eth[14:]},
		{Time: 1_700_000_000_123458000, Point: capture.DropTx, Link: packet.RawIP, App: "web-3", Reason: "src_addr", Len: len(spoof), Data: spoof[:40]},
	}
}

func write(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := pcapng.NewWriter(&buf, packet.Ethernet, 9018)
	if err != nil {
		t.Fatal(err)
	}
	recs := records()
	for i := range recs {
		if err := w.Write(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gopacket's reader sees one interface per point with its link type, and
// each packet on its point's interface with its time, lengths, direction
// and comments.
func TestWriterGopacket(t *testing.T) {
	r, err := pcapgo.NewNgReader(bytes.NewReader(write(t)), pcapgo.NgReaderOptions{WantMixedLinkType: true})
	if err != nil {
		t.Fatal(err)
	}
	recs := records()
	for i, want := range recs {
		data, ci, opts, err := r.ReadPacketDataWithOptions()
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if ci.InterfaceIndex != int(want.Point) || ci.Timestamp.UnixNano() != want.Time || ci.Length != want.Len ||
			!bytes.Equal(data, want.Data) {
			t.Errorf("packet %d: interface %d, time %d, len %d, %d bytes; want %+v", i, ci.InterfaceIndex, ci.Timestamp.UnixNano(), ci.Length, len(data), want)
		}
		var wantComments []string
		if want.App != "" {
			wantComments = append(wantComments, "app="+want.App)
		}
		if want.Reason != "" {
			wantComments = append(wantComments, "drop="+want.Reason)
		}
		if strings.Join(opts.Comments, ";") != strings.Join(wantComments, ";") {
			t.Errorf("packet %d: comments %q, want %q", i, opts.Comments, wantComments)
		}
		dir := pcapgo.NgEpbFlagDirectionOutbound
		if want.Point.Inbound() {
			dir = pcapgo.NgEpbFlagDirectionInbound
		}
		if opts.Flags == nil || opts.Flags.Direction != dir {
			t.Errorf("packet %d: flags %+v, want direction %v", i, opts.Flags, dir)
		}
	}
	if n := r.NInterfaces(); n != int(capture.NumPoints) {
		t.Fatalf("%d interfaces, want %d", n, capture.NumPoints)
	}
	for p := capture.Point(0); p < capture.NumPoints; p++ {
		intf, err := r.Interface(int(p))
		if err != nil {
			t.Fatal(err)
		}
		want := layers.LinkTypeEthernet
		if p == capture.AppRx || p == capture.AppTx || p == capture.DropTx {
			want = layers.LinkTypeRaw
		}
		if intf.Name != p.String() || intf.LinkType != want {
			t.Errorf("interface %d: %q %v, want %q %v", p, intf.Name, intf.LinkType, p, want)
		}
	}
}

// tshark reads the file: each packet's interface name, direction and
// comments.
func TestWriterTshark(t *testing.T) {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		if os.Getenv("SKYLANE_REQUIRE_PRIV") == "1" {
			t.Fatal("tshark not installed")
		}
		t.Skip("tshark not installed")
	}
	path := filepath.Join(t.TempDir(), "c.pcapng")
	if err := os.WriteFile(path, write(t), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tshark, "-r", path, "-T", "fields", "-E", "separator=|",
		"-e", "frame.interface_name", "-e", "frame.p2p_dir", "-e", "frame.comment", "-e", "udp.srcport").Output()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 {
		t.Fatalf("tshark printed %d lines:\n%s", len(lines), out)
	}
	t.Logf("tshark:\n%s", out)
	for i, rec := range records() {
		f := strings.Split(lines[i], "|")
		// frame.p2p_dir: 1 received (inbound), 0 sent (outbound).
		dir := "0"
		if rec.Point.Inbound() {
			dir = "1"
		}
		if len(f) != 4 || f[0] != rec.Point.String() || f[1] != dir {
			t.Errorf("line %d: %q, want interface %s", i, lines[i], rec.Point)
			continue
		}
		if rec.App != "" && !strings.Contains(f[2], "app="+rec.App) || rec.Reason != "" && !strings.Contains(f[2], "drop="+rec.Reason) {
			t.Errorf("line %d: comments %q", i, f[2])
		}
	}
}
