package channel

import (
	"strings"
	"testing"

	"github.com/skylane/skylane/pool"
)

// TestLayoutVersionRefused: an app of another layout version is refused at
// attach, with an error naming both versions, and maps nothing; the same
// descriptor with this build's version attaches.
func TestLayoutVersionRefused(t *testing.T) {
	c, err := New(Options{Name: "layout", Pool: pool.Options{MaxSegments: 4}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, v := range []int{0, 2, LayoutVersion + 1} {
		d := c.desc
		d.Version = v
		_, fds, err := c.Share()
		if err != nil {
			t.Fatal(err)
		}
		a, err := Attach(d, fds)
		if err == nil {
			a.Close()
			t.Fatalf("version %d: attached", v)
		}
		want := []string{"layout version", "speaks", "rebuild"}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("version %d: error %q does not say %q", v, err, w)
			}
		}
	}
	_, fds, err := c.Share()
	if err != nil {
		t.Fatal(err)
	}
	a, err := Attach(c.desc, fds)
	if err != nil {
		t.Fatalf("this build's layout: %v", err)
	}
	a.Close()
}
