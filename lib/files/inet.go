package files

import "crpipe/lib/pb"

func (d *dumper) dumpInet(ds *desc, rec *pb.FileDesc) error {
	e := ds.first()
	return refuse(e.pid, e.fd, "udp socket", e.link)
}

func (d *dumper) dumpNetlink(ds *desc, rec *pb.FileDesc) error {
	e := ds.first()
	return refuse(e.pid, e.fd, "netlink socket", e.link)
}
