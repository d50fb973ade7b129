package policy

import (
	"errors"
	"strings"
	"testing"
)

// observe takes true, false or "own": "own" allows capturing one's own
// apps but not the stats nor every frame; anything else is an error.
func TestObserveOwn(t *testing.T) {
	p, err := Parse("t.toml", []byte(`
[[allow]]
uid = 1001
observe = "own"
[[allow]]
uid = 1002
observe = true
[[allow]]
uid = 1003
`), testNames)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		uid      uint32
		all, err bool
	}{{1001, false, false}, {1002, true, false}, {1003, false, true}} {
		g, _ := p.Grant(Cred{UID: tc.uid, GID: tc.uid})
		all, err := g.Capture()
		if all != tc.all || (err != nil) != tc.err {
			t.Errorf("uid %d: Capture() = %v, %v", tc.uid, all, err)
		}
		if err != nil && (!errors.Is(err, ErrNotPermitted) || !strings.Contains(err.Error(), "rule 1")) {
			t.Errorf("uid %d: refusal %q names no rule that would allow it", tc.uid, err)
		}
	}
	if g, _ := p.Grant(Cred{UID: 1001}); g.Observe() == nil {
		t.Error(`observe = "own" allows the stats`)
	}
	if all, err := p.GrantAll(Cred{}).Capture(); !all || err != nil {
		t.Errorf("GrantAll: Capture() = %v, %v", all, err)
	}
	for _, bad := range []string{`"mine"`, `1`} {
		if _, err := Parse("t.toml", []byte("[[allow]]\nuid = 1\nobserve = "+bad+"\n"), testNames); err == nil {
			t.Errorf("observe = %s parsed", bad)
		}
	}
}
