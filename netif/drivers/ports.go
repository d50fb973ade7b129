package drivers

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/skylane/skylane/packet"
)

// KernelPorts tells which TCP and UDP ports the kernel's own sockets hold,
// in one network namespace: the flow table's Options.PortTaken, so that a
// user-space stack sharing an interface with the kernel does not take a
// port a kernel server is on (its flows would be steered away from that
// server).
//
// It reads /proc/net/{tcp,tcp6,udp,udp6}, opened by NewKernelPorts on the
// calling thread: a /proc/net file stays bound to the namespace it was
// opened in, so Taken answers for that namespace from any goroutine (the
// nexus worker is not on a namespace thread), each call re-reading the
// files.
//
// A port is taken by a kernel socket bound to it on the wildcard address
// or on one of the addresses given to NewKernelPorts (a socket on another
// address, e.g. 127.0.0.1, never sees the interface's traffic): for UDP
// any such socket; for TCP a listening one, or a connected one whose local
// port it is (a user-space listener on that port would have its packets).
// TIME-WAIT does not hold a port.
type KernelPorts struct {
	addrs map[netip.Addr]bool // immutable
	mu    sync.Mutex
	files []procFile // guarded by mu; nil once closed
	buf   bytes.Buffer
}

type procFile struct {
	f     *os.File
	proto uint8
	name  string
}

// NewKernelPorts opens the /proc/net socket tables of the calling thread's
// network namespace. addrs are the interface's addresses the user-space
// stack uses. The caller closes it.
func NewKernelPorts(addrs []netip.Addr) (*KernelPorts, error) {
	k := &KernelPorts{addrs: make(map[netip.Addr]bool)}
	for _, a := range addrs {
		k.addrs[a.Unmap()] = true
	}
	for _, t := range []struct {
		name  string
		proto uint8
	}{{"tcp", packet.ProtoTCP}, {"tcp6", packet.ProtoTCP}, {"udp", packet.ProtoUDP}, {"udp6", packet.ProtoUDP}} {
		// thread-self, not self: /proc/self/net is the namespace of the
		// process's main thread, not of this (possibly switched) thread.
		path := "/proc/thread-self/net/" + t.name
		f, err := os.Open(path)
		if errors.Is(err, fs.ErrNotExist) && strings.HasSuffix(t.name, "6") {
			continue // IPv6 disabled: no IPv6 sockets to find
		}
		if err != nil {
			k.Close()
			return nil, fmt.Errorf("kernel sockets: open %s: %w (is /proc mounted?)", path, err)
		}
		k.files = append(k.files, procFile{f: f, proto: t.proto, name: t.name})
	}
	return k, nil
}

// Taken reports whether a kernel socket holds port for proto
// (packet.ProtoTCP or ProtoUDP): flow.Options.PortTaken. A table it cannot
// read counts as taken: better refuse a port than take one from the kernel.
func (k *KernelPorts) Taken(proto uint8, port uint16) bool {
	_, taken := k.Holder(proto, port)
	return taken
}

// Holder is Taken with a description of the socket that holds the port,
// for error messages, e.g. "tcp 0.0.0.0:8080 LISTEN".
func (k *KernelPorts) Holder(proto uint8, port uint16) (string, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.files == nil {
		return "kernel socket tables closed", true
	}
	for _, pf := range k.files {
		if pf.proto != proto {
			continue
		}
		k.buf.Reset()
		_, err := pf.f.Seek(0, io.SeekStart)
		if err == nil {
			_, err = k.buf.ReadFrom(pf.f)
		}
		if err != nil {
			return fmt.Sprintf("cannot read /proc/net/%s: %v", pf.name, err), true
		}
		if desc, ok := k.scan(pf, k.buf.Bytes(), port); ok {
			return desc, true
		}
	}
	return "", false
}

// TCP states in /proc/net/tcp (include/net/tcp_states.h).
const (
	tcpTimeWait = 0x06
	tcpClose    = 0x07
	tcpListen   = 0x0A
)

// scan looks for a socket holding port in one table's text.
func (k *KernelPorts) scan(pf procFile, text []byte, port uint16) (string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Scan() // header line
	for sc.Scan() {
		// "sl local_address rem_address st ...": fields 1, 2, 3.
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue
		}
		addr, p, err := parseProcAddr(f[1])
		if err != nil || p != port {
			continue
		}
		st, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			continue
		}
		if pf.proto == packet.ProtoTCP && (st == tcpTimeWait || st == tcpClose) {
			continue
		}
		if !addr.IsUnspecified() && !k.addrs[addr.Unmap()] {
			continue
		}
		state := "bound"
		if pf.proto == packet.ProtoTCP {
			state = "connected"
			if st == tcpListen {
				state = "LISTEN"
			}
		}
		return fmt.Sprintf("%s %s %s", pf.name, netip.AddrPortFrom(addr, port), state), true
	}
	return "", false
}

// parseProcAddr parses "0100007F:1F90" (IPv4) or 32 hex digits and a port
// (IPv6): the address is printed as 32-bit words in host byte order, the
// port as a plain number.
func parseProcAddr(s string) (netip.Addr, uint16, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, fmt.Errorf("no port in %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, 0, fmt.Errorf("bad address %q", a)
	}
	var b [16]byte
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(b[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	if len(raw) == 4 {
		return netip.AddrFrom4([4]byte(b[:4])), uint16(port), nil
	}
	return netip.AddrFrom16(b), uint16(port), nil
}

// Close closes the tables; Taken then reports every port taken.
func (k *KernelPorts) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	var errs []error
	for _, pf := range k.files {
		errs = append(errs, pf.f.Close())
	}
	k.files = nil
	return errors.Join(errs...)
}
