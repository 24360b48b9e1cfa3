module crpipe

go 1.26.8

require (
	github.com/pierrec/lz4/v4 v4.1.33
	github.com/planetscale/vtprotobuf v0.6.0
	golang.org/x/sys v0.50.0
	google.golang.org/protobuf v1.36.12
)
