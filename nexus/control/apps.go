package control

// PortApp is who holds a port: the app's name (as it opened the port) and
// its uid.
type PortApp struct {
	Name string
	UID  uint32
}

// PortApps returns the app of every session's port, by the port's
// channel name (the name the switch's counters carry): metrics label the
// port series with it.
func (s *Server) PortApps() map[string]PortApp {
	m := make(map[string]PortApp)
	for _, x := range s.sessionList() {
		if p := x.portOf(); p != nil {
			m[p.Name()] = PortApp{Name: x.appName(), UID: x.cred.UID}
		}
	}
	return m
}
