package files

import "crpipe/lib/pb"

// unixDump is the sock_diag view of every unix socket.
type unixDump struct{}

func (d *dumper) dumpUnix(ds *desc, rec *pb.FileDesc) error {
	e := ds.first()
	return refuse(e.pid, e.fd, "unix socket", e.link)
}
