package control

import (
	"errors"

	"github.com/skylane/skylane/flow"
)

// Errors that cross the boundary between a nexus and its apps. The nexus
// side returns these very values (package nexus aliases them), and a
// refusal on the control socket carries a code that the app's RemoteError
// unwraps to, so errors.Is answers the same in the nexus's process and in
// an app's. The flow table's registration errors (flow.ErrPortInUse,
// flow.ErrKernelPort, flow.ErrBadKey, flow.ErrAddressNotLocal,
// flow.ErrMulticast) travel the same way: package
// flow, with the keys and kinds, is part of the contract apps link.
var (
	// ErrNotPermitted: the nexus's policy does not allow the request for
	// this app's credentials. The error text says what was refused and
	// which rule would allow it.
	ErrNotPermitted = errors.New("not permitted by the nexus's policy")
	// ErrNexusGone: the nexus exited, was killed, or closed the app's
	// session; the app's port, flows and connections are gone with it.
	ErrNexusGone = errors.New("nexus gone")
	// ErrClosed: the nexus is closing (or the port was closed). It
	// wraps ErrNexusGone.
	ErrClosed error = &gone{"nexus closed"}
	// ErrNoFlow: a teardown named a flow the port did not register.
	ErrNoFlow = errors.New("no such flow on this port")
	// ErrTooManyFlows: a limit of the nexus refused a flow: the app's
	// port, or the nexus, holds as many flows as it may (the nexus's
	// flowswitch.Options.MaxPortFlows, MaxFlows). A connection refused so
	// is reset, and an Accept that would have returned it returns an error
	// that wraps this one. It is the flow table's flow.ErrTooManyFlows.
	ErrTooManyFlows = flow.ErrTooManyFlows
	// ErrLayout: the app speaks another channel layout version
	// (channel.LayoutVersion) than the nexus; rebuild the app against the
	// nexus's Skylane version.
	ErrLayout = errors.New("channel layout version mismatch")
)

// gone is an error that is also ErrNexusGone.
type gone struct{ msg string }

func (e *gone) Error() string { return e.msg }
func (e *gone) Unwrap() error { return ErrNexusGone }

// codes are the errors a reply names. The first match wins: an error that
// wraps another (flow.ErrKernelPort wraps flow.ErrPortInUse, ErrClosed
// ErrNexusGone) comes before it.
var codes = []struct {
	code string
	err  error
}{
	{"kernel-port", flow.ErrKernelPort},
	{"port-in-use", flow.ErrPortInUse},
	{"bad-key", flow.ErrBadKey},
	{"address-not-local", flow.ErrAddressNotLocal},
	{"multicast", flow.ErrMulticast},
	{"too-many-flows", ErrTooManyFlows},
	{"no-flow", ErrNoFlow},
	{"closed", ErrClosed},
	{"nexus-gone", ErrNexusGone},
	{"not-permitted", ErrNotPermitted},
	{"layout", ErrLayout},
}

// CodeOf returns the code of the first sentinel error err wraps (see
// codes), or "" for none: what Failure puts in a Reply.
func CodeOf(err error) string {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return ""
}

// Failure is the reply refusing a request with err.
func Failure(err error) Reply { return Reply{Error: err.Error(), Code: CodeOf(err)} }

// RemoteError is a request the nexus refused. It unwraps to the sentinel
// error its code names (flow.ErrPortInUse, ErrNoFlow, ErrNotPermitted,
// ...), if any.
type RemoteError struct {
	Msg  string // the nexus's error text
	Code string // see codes
}

func (e *RemoteError) Error() string { return "nexus: " + e.Msg }

// Unwrap returns the sentinel error Code names, or nil.
func (e *RemoteError) Unwrap() error {
	for _, c := range codes {
		if c.code == e.Code {
			return c.err
		}
	}
	return nil
}
