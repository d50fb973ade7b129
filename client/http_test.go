package client_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/internal/selfsigned"
)

// TestHTTPS serves HTTPS (net/http over crypto/tls, unchanged) from stack A
// and fetches from stack B through both nexuses and the wire: a small
// page, a 4 MiB body (GSO segments out of A, super packets into B), a POST
// echoed back, over IPv4 and IPv6 on one dual-stack listener. No packet of
// either honest stack is dropped by a flowswitch check.
func TestHTTPS(t *testing.T) {
	w := newWorld(t)
	cert, pool, err := selfsigned.New("skylane test", time.Hour, addrA4, addrA6)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 4<<20)
	rand.Read(big)
	sum := sha256.Sum256(big)

	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(rw http.ResponseWriter, r *http.Request) {
		io.WriteString(rw, "hello over skylane from "+r.RemoteAddr)
	})
	mux.HandleFunc("/big", func(rw http.ResponseWriter, r *http.Request) { rw.Write(big) })
	mux.HandleFunc("/echo", func(rw http.ResponseWriter, r *http.Request) { io.Copy(rw, r.Body) })
	ln, err := w.sa.Listen("tcp", ":443")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	defer func() {
		srv.Close()
		if err := <-served; err != http.ErrServerClosed {
			t.Errorf("serve: %v", err)
		}
	}()

	tr := &http.Transport{
		DialContext:       w.sb.DialContext,
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
	}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	for _, base := range []string{"https://198.18.0.1", "https://[2001:db8::1]"} {
		resp, err := cl.Get(base + "/hello")
		if err != nil {
			t.Fatalf("GET %s/hello: %v", base, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || !bytes.HasPrefix(body, []byte("hello over skylane")) {
			t.Fatalf("GET %s/hello: %d %q %v", base, resp.StatusCode, body, err)
		}
		if resp.TLS == nil || !resp.TLS.HandshakeComplete {
			t.Fatalf("GET %s/hello: not over TLS", base)
		}
		t.Logf("%s/hello: %s (%s)", base, body, resp.Proto)

		resp, err = cl.Get(base + "/big")
		if err != nil {
			t.Fatalf("GET %s/big: %v", base, err)
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		resp.Body.Close()
		if err != nil || n != int64(len(big)) || !bytes.Equal(h.Sum(nil), sum[:]) {
			t.Fatalf("GET %s/big: %d bytes, err %v, digest match %v", base, n, err, bytes.Equal(h.Sum(nil), sum[:]))
		}

		msg := bytes.Repeat([]byte("post "), 50000)
		resp, err = cl.Post(base+"/echo", "application/octet-stream", bytes.NewReader(msg))
		if err != nil {
			t.Fatalf("POST %s/echo: %v", base, err)
		}
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(body, msg) {
			t.Fatalf("POST %s/echo: %d bytes back, err %v", base, len(body), err)
		}
	}

	ea, eb := w.sa.Endpoint().Stats(), w.sb.Endpoint().Stats()
	if ea.TxGSO == 0 {
		t.Errorf("server sent no GSO segment: %+v", ea)
	}
	if ea.FlowsAuto == 0 {
		t.Errorf("server registered no accepted connection: %+v", ea)
	}
	sta, err := w.na.Stats()
	if err != nil {
		t.Fatal(err)
	}
	stb, err := w.nb.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if stb.Switch.SuperPackets == 0 {
		t.Errorf("client's nexus merged no super packet: %+v", stb.Switch)
	}
	if sta.Switch.TxDrops != (flowswitch.TxDrops{}) || stb.Switch.TxDrops != (flowswitch.TxDrops{}) {
		t.Errorf("honest stacks saw flowswitch TX drops: a %+v, b %+v", sta.Switch.TxDrops, stb.Switch.TxDrops)
	}
	t.Logf("server endpoint: %d packets out (%d GSO packets cut into MTU segments), %d in", ea.TxPackets, ea.TxGSO, ea.RxPackets)
	t.Logf("client endpoint: %d packets in (%d bytes), %d out", eb.RxPackets, eb.RxBytes, eb.TxPackets)
	t.Logf("client's nexus: %d frames in %d batches, %d super packets absorbing %d segments",
		stb.Switch.Packets, stb.Switch.Batches, stb.Switch.SuperPackets, stb.Switch.Merged)
}
