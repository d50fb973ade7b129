package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/drivers"
)

// hostileRSS bounds the resident memory of `skylane serve` under hostile
// traffic: the app's pool at its cap (nexus.DefaultMaxSegments, 32 MiB),
// the AF_XDP UMEM (8 MiB) or AF_PACKET ring, netstack's queues of the
// listener's share of the ring, and the Go heap around them. It measured
// under 100 MiB.
const hostileRSS = 256 << 20

// hostileStepTime bounds every step of TestHostile: a flood runs for
// floodTime, a scan gives up on the host after this.
const hostileStepTime = 90 * time.Second

// TestHostile is the hostile-traffic suite: `skylane serve` (the binary)
// on AF_XDP and on AF_PACKET serves HTTP on the local end of a veth, the
// kernel serves HTTP on another port of the same address, and the peer
// namespace sends, with real tools, every class of malformed frame
// (testdata/malformed.py, scapy), SYN, UDP and ACK floods (hping3, bounded
// by floodTime), and nmap's TCP SYN, connect and UDP scans and OS
// detection against the address. After each step: the user-space server
// answers the kernel's curl, the kernel's own port answers, skylane is
// alive, and its RSS is under hostileRSS. The floods show in the nexus's
// Prometheus metrics (listen_share).
func TestHostile(t *testing.T) {
	nettest.RequirePriv(t)
	for _, c := range []string{"hping3", "nmap", "curl"} {
		nettest.RequireCommand(t, c)
	}
	python := scapyPython(t)
	bin := skylaneBinary(t)
	for _, d := range ethDrivers {
		t.Run(d, func(t *testing.T) { testHostile(t, d, bin, python) })
	}
}

func testHostile(t *testing.T, driver, bin, python string) {
	v := nettest.NewVeth(t, nettest.VethOptions{})
	if driver == drivers.AFXDP {
		wireChecksums(t, v)
	}
	addr := v.LocalAddr.Addr()
	const metricsAt = "127.0.0.1:9464"
	p := startServeProc(t, v.Local, bin, "--driver", driver, "--dev", v.LocalName,
		"--addr", fmt.Sprintf("%s:%d", addr, userPort), "--peer-mac", v.PeerMAC.String(), "--metrics", metricsAt)
	kernelHTTP(t, v.Local)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var maxRSS int64
	// check is what must hold after every step.
	check := func(step string) {
		t.Helper()
		select {
		case <-p.exited:
			t.Fatalf("after %s: skylane serve exited: %v\n%s", step, p.err, p.stderrText())
		default:
		}
		if out := curl(t, v.Peer, fmt.Sprintf("http://%s:%d/", addr, userPort)); !strings.HasPrefix(out, "hello from skylane") {
			t.Errorf("after %s: the user-space server answered %q", step, out)
		}
		if out := curl(t, v.Peer, fmt.Sprintf("http://%s:%d/", addr, kernelPort)); !strings.HasPrefix(out, "kernel") {
			t.Errorf("after %s: the kernel's server answered %q", step, out)
		}
		r := procRSS(t, p.cmd.Process.Pid)
		maxRSS = max(maxRSS, r)
		if r > hostileRSS {
			t.Errorf("after %s: skylane serve's RSS is %d MiB, bound %d MiB", step, r>>20, hostileRSS>>20)
		}
	}
	check("start")

	// Malformed frames, every class a few rounds.
	script, err := filepath.Abs("testdata/malformed.py")
	if err != nil {
		t.Fatal(err)
	}
	out := run(t, ctx, v.Peer, python, script, v.PeerName, v.LocalMAC.String(), addr.String(),
		v.LocalAddr6.Addr().String(), strconv.Itoa(userPort), "20")
	t.Logf("malformed frames sent (count, classes): %s", out)
	check("malformed frames")

	// Floods, bounded in time.
	port := strconv.Itoa(userPort)
	for _, f := range []struct {
		name string
		args []string
	}{
		{"SYN flood", []string{"-S", "-p", port}},
		{"spoofed SYN flood", []string{"-S", "-p", port, "--rand-source"}},
		{"UDP flood", []string{"--udp", "-p", port, "-d", "64"}},
		{"ACK flood", []string{"-A", "-p", port}},
	} {
		args := append([]string{strconv.Itoa(int(floodTime / time.Second)), "hping3", "-q", "--flood"}, f.args...)
		out, _ := v.Peer.Command(ctx, "timeout", append(args, addr.String())...).CombinedOutput() // ends by timeout's signal
		t.Logf("%s: %s", f.name, lastLine(string(out), "packets transmitted"))
		check(f.name)
	}

	// nmap: SYN, connect and UDP scans, and OS detection.
	hostTimeout := "--host-timeout=" + strconv.Itoa(int(hostileStepTime/time.Second)) + "s"
	open := regexp.MustCompile(`(?m)^` + port + `/tcp\s+open`)
	for _, s := range []struct {
		name     string
		args     []string
		wantOpen bool // the scan must find the user-space port open
	}{
		{"nmap SYN scan", []string{"-sS", "-p", "1-1024," + port + "," + strconv.Itoa(kernelPort)}, true},
		{"nmap connect scan", []string{"-sT", "-p", "1-1024," + port + "," + strconv.Itoa(kernelPort)}, true},
		{"nmap UDP scan", []string{"-sU", "-p", "53,123,161,5353," + port}, false},
		{"nmap OS detection", []string{"-O", "--osscan-guess", "-p", "1," + port + "," + strconv.Itoa(kernelPort)}, true},
	} {
		args := append([]string{"-n", "-Pn", "--max-retries", "1", hostTimeout}, s.args...)
		out := run(t, ctx, v.Peer, "nmap", append(args, addr.String())...)
		t.Logf("%s:\n%s", s.name, out)
		if s.wantOpen && !open.MatchString(out) {
			t.Errorf("%s did not find %s/tcp open", s.name, port)
		}
		check(s.name)
	}

	// The floods are in the nexus's counters, for Prometheus.
	metrics := run(t, ctx, v.Local, "curl", "-sS", "--max-time", "10", "http://"+metricsAt+"/metrics")
	share := regexp.MustCompile(`(?m)^\w*drops_total\{[^}]*reason="listen_share"[^}]*\} (\S+)`).FindStringSubmatch(metrics)
	if share == nil {
		t.Errorf("no listen_share drops in the metrics")
	} else if n, _ := strconv.ParseFloat(share[1], 64); n == 0 {
		t.Errorf("listen_share drops are 0 after SYN and ACK floods")
	} else {
		t.Logf("listen_share drops: %s", share[1])
	}
	// The malformed frames are in them too, each by its parse reason.
	parse := 0.0
	for _, m := range regexp.MustCompile(`(?m)^\w*drops_total\{[^}]*reason="parse_[^"]*"[^}]*\} (\S+)`).FindAllStringSubmatch(metrics, -1) {
		n, _ := strconv.ParseFloat(m[1], 64)
		parse += n
	}
	if parse == 0 {
		t.Errorf("no parse drops in the metrics after the malformed frames")
	}
	t.Logf("parse drops: %.0f", parse)
	t.Logf("skylane serve's RSS peaked at %d MiB (bound %d MiB)", maxRSS>>20, hostileRSS>>20)
	if err := p.terminate(t); err != nil {
		t.Errorf("serve after SIGTERM: %v\n%s", err, p.stderrText())
	}
}

// scapyPython returns a python3 that imports scapy (Debian's python3-scapy
// is for the system's /usr/bin/python3, which another python3 on PATH may
// hide).
func scapyPython(t *testing.T) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import scapy.all").Run() == nil {
			return py
		}
	}
	if os.Getenv("SKYLANE_REQUIRE_PRIV") == "1" {
		t.Fatal("no python3 with scapy (make test installs python3-scapy)")
	}
	t.Skip("no python3 with scapy; run make test as root to install python3-scapy")
	return ""
}

// run runs name in ns, bounded by hostileStepTime, and returns its output;
// it fails the test on error.
func run(t *testing.T, ctx context.Context, ns *nettest.NS, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, hostileStepTime)
	defer cancel()
	out, err := ns.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// lastLine returns the line of s that holds marker, or s.
func lastLine(s, marker string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, marker) {
			return strings.TrimSpace(l)
		}
	}
	return strings.TrimSpace(s)
}

// procRSS returns the resident set size of process pid in bytes.
func procRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("RSS of %d: %v", pid, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}
