package takeover

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/netif/afxdp"
	"github.com/skylane/skylane/nexus/control"
)

// socketPair returns two connected SOCK_SEQPACKET sockets.
func socketPair(t *testing.T) (a, b *net.UnixConn) {
	t.Helper()
	fa, fb, err := shm.SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	defer fb.Close()
	if a, err = shm.UnixConn(fa); err != nil {
		t.Fatal(err)
	}
	if b, err = shm.UnixConn(fb); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestStateWire: a state larger than one message and more descriptors
// than one message carries arrive whole, every descriptor a working
// duplicate; a state that names another count of descriptors is refused
// and what arrived is closed.
func TestStateWire(t *testing.T) {
	a, b := socketPair(t)
	st := State{Version: StateVersion, Driver: "afxdp"}
	for i := range 40 { // 40 sessions with long names: several chunks
		st.Server.Sessions = append(st.Server.Sessions, control.SessionHandover{ID: uint64(i), Name: strings.Repeat("x", 4000)})
	}
	var fds []int
	for range st.fdCount() {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		fd, err := shm.Dup(int(w.Fd()))
		w.Close()
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	defer closeFDs(fds)
	errc := make(chan error, 1)
	go func() { errc <- sendState(a, &st, fds) }()
	h, err := recv(b, time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got, gfds, err := recvState(b, h, time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	defer closeFDs(gfds)
	if len(got.Server.Sessions) != 40 || got.Server.Sessions[39].Name != st.Server.Sessions[39].Name || len(gfds) != len(fds) {
		t.Fatalf("got %d sessions, %d descriptors; sent 40, %d", len(got.Server.Sessions), len(gfds), len(fds))
	}
	for _, fd := range gfds {
		if _, err := unix.Write(fd, []byte("x")); err != nil {
			t.Fatalf("received descriptor %d: %v", fd, err)
		}
	}

	// Announced with one descriptor too few for what it names.
	st.Server.Sessions = st.Server.Sessions[:1]
	go func() { errc <- sendState(a, &st, fds[:afxdp.HandoverFDs+2]) }()
	if h, err = recv(b, time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	before := openFDs(t)
	if _, _, err := recvState(b, h, time.Now().Add(5*time.Second)); err == nil {
		t.Fatal("a state naming more descriptors than came was accepted")
	}
	<-errc
	if after := openFDs(t); after != before {
		t.Errorf("a refused state left %d descriptors open", after-before)
	}
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

// FuzzDecodeState: whatever the takeover socket carries, decoding it
// never panics, and a state it accepts names exactly the descriptors that
// came with it.
func FuzzDecodeState(f *testing.F) {
	ok, _ := json.Marshal(State{Version: StateVersion, Driver: "afxdp", Server: control.ServerHandover{Sessions: []control.SessionHandover{{ID: 1}}}})
	f.Add(ok, afxdp.HandoverFDs+3)
	f.Add(ok, 0)
	f.Add([]byte(`{"version":1,"nexus":{"ports":[{"name":"a"},{"name":"b"}]}}`), afxdp.HandoverFDs+2+16)
	f.Add([]byte(`{"version":1,"server":{"sessions":null}}`), -1)
	f.Add([]byte(`{`), 1)
	f.Fuzz(func(t *testing.T, b []byte, nfds int) {
		st, err := decodeState(b, nfds, StateVersion)
		if err != nil {
			return
		}
		if st.fdCount() != nfds || st.Version != StateVersion {
			t.Fatalf("accepted a state of version %d naming %d descriptors with %d", st.Version, st.fdCount(), nfds)
		}
		_ = fmt.Sprint(st.Driver)
	})
}
