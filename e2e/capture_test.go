package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/internal/nettest"
)

// captureLimit bounds a capture's life: tshark stops by itself after it,
// whatever happens to the test.
const captureLimit = 120 * time.Second

// capture is tshark writing what an interface sees to a pcap file: an
// observer outside Skylane, so a frame the flowswitch let through cannot
// hide from it.
type capture struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	file   string
	exited chan struct{} // closed once tshark exited and its stderr was read
	stderr strings.Builder
}

// startCapture starts tshark on iface in ns and returns once it captures.
func startCapture(t *testing.T, ns *nettest.NS, iface string) *capture {
	t.Helper()
	nettest.RequireCommand(t, "tshark")
	ctx, cancel := context.WithTimeout(context.Background(), captureLimit+10*time.Second)
	c := &capture{cancel: cancel, file: filepath.Join(t.TempDir(), iface+".pcap"), exited: make(chan struct{})}
	// -F pcap: the classic format pcapgo reads; -a duration: the bound;
	// -q: no per-packet lines.
	c.cmd = ns.Command(ctx, "tshark", "-q", "-n", "-i", iface, "-F", "pcap", "-w", c.file,
		"-a", fmt.Sprintf("duration:%d", int(captureLimit.Seconds())))
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start tshark: %v", err)
	}
	// tshark prints "Capturing on 'iface'" before its capture child
	// (dumpcap) has the interface open, and "Capture started" once it has:
	// from then on nothing is missed.
	started := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		said := false
		for sc.Scan() {
			line := sc.Text()
			c.stderr.WriteString(line + "\n")
			if !said && strings.Contains(line, "Capture started") {
				said = true
				started <- true
			}
		}
		if !said {
			started <- false
		}
		c.cmd.Wait() // its status says nothing: SIGINT is how it is stopped
		close(c.exited)
	}()
	t.Cleanup(func() { c.kill() })
	select {
	case ok := <-started:
		if !ok {
			t.Fatalf("tshark on %s exited before capturing: %s", iface, c.stderr.String())
		}
	case <-time.After(opTimeout):
		t.Fatalf("tshark on %s did not start in %v", iface, opTimeout)
	}
	return c
}

// stop ends the capture (SIGINT: tshark flushes its file) and returns the
// packets it wrote.
func (c *capture) stop(t *testing.T) ([]gopacket.Packet, error) {
	t.Helper()
	// ip netns exec execs tshark in place: the process is tshark.
	c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.exited:
	case <-time.After(opTimeout):
		c.kill()
		return nil, errors.New("tshark did not stop on SIGINT")
	}
	return readPcap(c.file)
}

// readPcap reads a classic pcap file. (gopacket's pcapgo would pull in
// golang.org/x/net, which go.mod does not have; the format is 24 bytes of
// file header and 16 per record.)
func readPcap(path string) ([]gopacket.Packet, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) < 24 {
		return nil, fmt.Errorf("pcap %s: %d bytes, no file header", path, len(data))
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(data) {
	case 0xa1b2c3d4, 0xa1b23c4d: // microsecond, nanosecond timestamps
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("pcap %s: not a classic pcap file (magic %x)", path, data[:4])
	}
	lt := layers.LinkType(bo.Uint32(data[20:24]))
	var pkts []gopacket.Packet
	for off := 24; off < len(data); {
		if len(data)-off < 16 {
			return pkts, fmt.Errorf("pcap %s: truncated record header at %d", path, off)
		}
		n := int(bo.Uint32(data[off+8:]))
		off += 16
		if n > len(data)-off {
			return pkts, fmt.Errorf("pcap %s: truncated record at %d", path, off)
		}
		pkts = append(pkts, gopacket.NewPacket(data[off:off+n], lt, gopacket.Default))
		off += n
	}
	return pkts, nil
}

// kill ends tshark at once, if it still runs, and waits for it;
// idempotent.
func (c *capture) kill() {
	c.cancel()
	<-c.exited
}
