package client_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/internal/selfsigned"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/inproc"
)

// Two hosts, each a nexus on one end of an in-memory wire; an HTTPS server
// in a user-space stack on the first, a client stack on the second. On a
// real interface the link comes from netif/drivers instead of memif.
func Example() {
	wireA, wireB, _ := memif.NewPair(memif.Options{Name: "example"})
	hostA, hostB := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	nxA, _ := nexus.New(nexus.Options{Link: wireA, Addrs: []netip.Addr{hostA}})
	defer nxA.Close()
	nxB, _ := nexus.New(nexus.Options{Link: wireB, Addrs: []netip.Addr{hostB}})
	defer nxB.Close()

	server, _ := client.New(inproc.Nexus(nxA), client.Options{Name: "server"})
	defer server.Close()
	cert, roots, _ := selfsigned.New("example", time.Hour, hostA)
	ln, _ := server.Listen("tcp", ":443") // registers the listener flow first
	srv := &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "hello over skylane") }),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
	}
	go srv.ServeTLS(ln, "", "")
	defer srv.Close()

	stackB, _ := client.New(inproc.Nexus(nxB), client.Options{Name: "client"})
	defer stackB.Close()
	hc := &http.Client{Transport: &http.Transport{
		DialContext:     stackB.DialContext, // every connection is a user-space TCP flow
		TLSClientConfig: &tls.Config{RootCAs: roots},
	}}
	resp, err := hc.Get("https://198.18.0.1/")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.Status, string(body))
	// Output: 200 OK hello over skylane
}
