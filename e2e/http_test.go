package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/skylane/skylane/flowswitch"
)

// bigSize is the body of the bulk transfers: enough for TCP to open its
// window and for the paths' batching (GSO out of the stack, super packets
// and merging into it) to take part.
const bigSize = 4 << 20

// TestCurl: the kernel's curl in the peer namespace fetches a page from the
// user-space server over IPv4 and IPv6, then moves 4 MiB each way (a
// download, and an upload the server hashes), on every driver.
func TestCurl(t *testing.T) {
	for _, d := range allDrivers {
		t.Run(d, func(t *testing.T) {
			w := newWorld(t, d)
			ln, err := w.st.Listen("tcp", ":8080")
			if err != nil {
				t.Fatal(err)
			}
			big := make([]byte, bigSize)
			rng := rand.NewChaCha8([32]byte{})
			rng.Read(big)
			bigSum := sha256.Sum256(big)
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) {
				io.WriteString(rw, "hello from the user-space stack to "+r.RemoteAddr+"\n")
			})
			mux.HandleFunc("/big", func(rw http.ResponseWriter, r *http.Request) { rw.Write(big) })
			mux.HandleFunc("/sum", func(rw http.ResponseWriter, r *http.Request) {
				h := sha256.New()
				io.Copy(h, r.Body)
				io.WriteString(rw, hex.EncodeToString(h.Sum(nil)))
			})
			serveMux(t, ln, mux)

			for _, a := range []string{url("http", w.user4, userPort), url("http", w.user6, userPort)} {
				out := curl(t, w.peer, "-g", a)
				if !strings.HasPrefix(out, "hello from the user-space stack") {
					t.Fatalf("curl %s: %q", a, out)
				}
				t.Logf("curl %s: %s", a, strings.TrimSpace(out))
			}
			file := filepath.Join(t.TempDir(), "big")
			curl(t, w.peer, "-o", file, url("http", w.user4, userPort)+"big")
			got, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(got) != bigSum {
				t.Fatalf("download: %d bytes, digest mismatch", len(got))
			}
			if err := os.WriteFile(file, big, 0o600); err != nil {
				t.Fatal(err)
			}
			out := curl(t, w.peer, "--data-binary", "@"+file, url("http", w.user4, userPort)+"sum")
			if out != hex.EncodeToString(bigSum[:]) {
				t.Fatalf("upload: server hashed %q", out)
			}
			st, err := w.nx.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.Switch.TxDrops != (flowswitch.TxDrops{}) {
				t.Errorf("the transmit checks refused packets of an honest stack: %+v", st.Switch.TxDrops)
			}
			t.Logf("4 MiB each way; switch: %d frames in, %d super packets (%d segments merged), %d packets out",
				st.Switch.Packets, st.Switch.SuperPackets, st.Switch.Merged, st.Switch.TxPackets)
		})
	}
}
