package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/drivers"
)

// capturePolicy: app a serves 8081; app b, another uid, tries to send on
// a's port (the spoof probe).
const capturePolicy = `
[[allow]]
uid = 65534
tcp = ["8081"]
addrs = ["198.18.0.1"]

[[allow]]
uid = 65533
tcp = ["8082"]
addrs = ["198.18.0.1"]
dial = true
`

// capturedPkt is one packet of a skylane capture, as gopacket reads it.
type capturedPkt struct {
	intf     string // the capture point
	comments string
	pkt      gopacket.Packet
}

// TestNexusCapture runs `skylane nexus` on a veth (AF_PACKET) with two app
// processes and `skylane capture` writing a pcapng file while the kernel's
// curl fetches app a's page and app b sends packets on a's port. gopacket
// and tshark read the file: the request is at device-rx and at app-rx with
// a's name, the response at app-tx and device-tx with a's name; b's
// spoofs are at app-tx and at drop-tx with their reasons, never at
// device-tx.
func TestNexusCapture(t *testing.T) {
	nettest.RequirePriv(t)
	nettest.RequireCommand(t, "curl")
	tshark := nettest.RequireCommand(t, "tshark")
	bin := skylaneBinary(t)
	app := appBinary(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	dir := sharedDir(t)
	pol := filepath.Join(dir, "policy.toml")
	if err := os.WriteFile(pol, []byte(capturePolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "nexus.sock")
	startProc(t, v.Local.Command, bin, []string{"nexus", "--driver", drivers.AFPacket, "--dev", v.LocalName,
		"--socket", sock, "--socket-group", fmt.Sprint(socketGroup), "--policy", pol},
		`msg="nexus started"`)
	file := filepath.Join(dir, "nexus.pcapng")
	capt := startProc(t, exec.CommandContext, bin, []string{"capture", "--nexus", sock, "-w", file}, "capturing on")

	cfgA := appConfig{Name: "a", Listen: "198.18.0.1:8081"}
	startApp(t, app, 65534, sock, cfgA)
	startApp(t, app, 65533, sock, appConfig{Name: "b", Listen: "198.18.0.1:8082", Probes: []probe{
		{Name: "send on a's port", Op: "spoof", Address: "198.18.0.1:8081", Want: "ok"},
	}})
	checkCurl(t, v.Peer, cfgA, 65534)
	for deadline := time.Now().Add(opTimeout); spoofDrops(nexusStats(t, bin, sock)) < appSpoofs; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the transmit checks did not drop b's %d spoofs in %v", appSpoofs, opTimeout)
		}
	}
	// skylane capture flushes its file after each batch: wait until the
	// spoofs (at app-tx and drop-tx) and the response (at app-tx and
	// device-tx) are in it before stopping it.
	for deadline := time.Now().Add(opTimeout); ; time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(file)
		if bytes.Count(b, []byte(tagSpoof)) >= 2*appSpoofs && bytes.Count(b, []byte("HTTP/1.1 200")) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the spoofs and the response are not all in the capture file after %v", opTimeout)
		}
	}
	if err := capt.terminate(t); err != nil {
		t.Fatalf("skylane capture after SIGTERM: %v\n%s", err, capt.text())
	}
	if !strings.Contains(capt.text(), "frames written") {
		t.Errorf("skylane capture printed no summary:\n%s", capt.text())
	}
	t.Logf("skylane capture: %s", capt.text())

	pkts := readNexusCapture(t, file)
	type seen map[string]int // capture point (and app) → packets
	req, resp, spoof := seen{}, seen{}, seen{}
	reasons := map[string]int{}
	for _, p := range pkts {
		key := p.intf
		if i := strings.Index(p.comments, "app="); i >= 0 {
			name, _, _ := strings.Cut(p.comments[i+len("app="):], ";")
			key += " " + strings.TrimRight(name, "0123456789") // "app-rx a-"
		}
		tl, _ := p.pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
		switch {
		case tl != nil && tl.DstPort == 8081 && bytes.HasPrefix(tl.Payload, []byte("GET /")):
			req[key]++
		case tl != nil && tl.SrcPort == 8081 && bytes.HasPrefix(tl.Payload, []byte("HTTP/1.1 200")):
			resp[key]++
		case bytes.Contains(p.pkt.Data(), []byte(tagSpoof)):
			spoof[key]++
			if p.intf == "drop-tx" {
				_, r, _ := strings.Cut(p.comments, "drop=")
				reasons[r]++
			}
		}
	}
	t.Logf("%d packets; request at %v, response at %v, spoofs at %v (reasons %v)", len(pkts), req, resp, spoof, reasons)
	if req["device-rx"] != 1 || req["app-rx a-"] != 1 {
		t.Errorf("the request is at %v, want once at device-rx and at app-rx of a", req)
	}
	if resp["app-tx a-"] != 1 || resp["device-tx a-"] != 1 {
		t.Errorf("the response is at %v, want once at app-tx and device-tx of a", resp)
	}
	if spoof["app-tx b-spoof-"] != appSpoofs || spoof["drop-tx b-spoof-"] != appSpoofs || len(spoof) != 2 {
		t.Errorf("the spoofs are at %v, want %d at app-tx and drop-tx of b's raw session, nowhere else", spoof, appSpoofs)
	}
	for r := range reasons {
		if r != "src_port" && r != "not_owner" && r != "flow_id" && r != "proto" {
			t.Errorf("a spoof dropped for %q", r)
		}
	}

	// tshark reads the same file and shows the drop reasons as comments.
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, tshark, "-r", file, "-Y", `frame.comment contains "drop="`,
		"-T", "fields", "-e", "frame.interface_name", "-e", "frame.comment").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	drops := 0
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Split(l, "\t"); len(f) == 2 && strings.HasPrefix(f[0], "drop-") && strings.Contains(f[1], "drop=") {
			drops++
		}
	}
	if drops < appSpoofs {
		t.Errorf("tshark shows %d drops with their reason, want at least %d:\n%s", drops, appSpoofs, out)
	}
	// Each capture point sees the same segments: without the sequence
	// analysis, tshark takes the later copies for HTTP too, not for
	// retransmissions.
	out, err = exec.CommandContext(ctx, tshark, "-r", file, "-o", "tcp.analyze_sequence_numbers:FALSE",
		"-d", "tcp.port==8081,http", "-Y", "http.request",
		"-T", "fields", "-e", "frame.interface_name", "-e", "frame.comment").Output()
	if err != nil || !strings.Contains(string(out), "device-rx") || !strings.Contains(string(out), "app-rx\tapp=a-") {
		t.Errorf("tshark's HTTP requests: %v\n%s", err, out)
	}

	// -w - streams: tshark reads the pipe; -c ends the capture.
	pipe := startProc(t, exec.CommandContext, "sh", []string{"-c", bin + " capture --nexus " + sock +
		" --point device-rx --app - -c 3 -w - | " + tshark + " -r - -T fields -e frame.interface_name -e tcp.dstport"}, "capturing on")
	checkCurl(t, v.Peer, cfgA, 65534)
	select {
	case <-pipe.exited:
	case <-time.After(opTimeout):
		t.Fatalf("skylane capture -c 3 | tshark still running after %v:\n%s", opTimeout, pipe.text())
	}
	t.Logf("skylane capture -c 3 -w - | tshark -r -:\n%s", pipe.text())
	if pipe.err != nil || strings.Count(pipe.text(), "device-rx\t8081") < 1 || !strings.Contains(pipe.text(), "3 frames written") {
		t.Errorf("skylane capture -c 3 -w - | tshark -r -: %v\n%s", pipe.err, pipe.text())
	}
}

// readNexusCapture reads a pcapng file of skylane capture with gopacket.
func readNexusCapture(t *testing.T, file string) []capturedPkt {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.NgReaderOptions{WantMixedLinkType: true})
	if err != nil {
		t.Fatalf("pcapng: %v", err)
	}
	var pkts []capturedPkt
	for {
		data, ci, opts, err := r.ReadPacketDataWithOptions()
		if err == io.EOF {
			return pkts
		}
		if err != nil {
			t.Fatalf("pcapng: packet %d: %v", len(pkts), err)
		}
		intf, err := r.Interface(ci.InterfaceIndex)
		if err != nil {
			t.Fatal(err)
		}
		pkts = append(pkts, capturedPkt{intf: intf.Name, comments: strings.Join(opts.Comments, ";"),
			pkt: gopacket.NewPacket(append([]byte(nil), data...), intf.LinkType, gopacket.Default)})
	}
}
