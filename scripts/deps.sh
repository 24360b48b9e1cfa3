#!/usr/bin/env bash
# deps.sh installs, with apt-get and go install, what crpipe's tests and
# generators need, only when it is missing. Idempotent and quiet: it prints
# one line per install and nothing when all is there.
#
#   scripts/deps.sh test            tools the tests use (lz4, protoc, gcc, ...)
#   scripts/deps.sh generate        protoc and both plugins for make generate
#   scripts/deps.sh protoc-gen-go   ensure protoc-gen-go and print its path
#   scripts/deps.sh protoc-gen-go-vtproto
#                                   ensure protoc-gen-go-vtproto, print its path
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_VTPROTO_VERSION=v0.6.0

have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
	(($#)) || return 0
	if [ "$(id -u)" != 0 ]; then
		echo "deps: missing $*; run as root (or install them) first" >&2
		exit 1
	fi
	echo "deps: apt-get install $*" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# plugin NAME PACKAGE VERSION prints the path of protoc plugin NAME built
# from PACKAGE's module at VERSION (as the binary's build information says:
# protoc-gen-go-vtproto has no --version), installing PACKAGE@VERSION with
# go install when there is none.
plugin() {
	local name=$1 pkg=$2 version=$3 p
	for p in "$(command -v "$name" 2>/dev/null || true)" "$(go env GOPATH)/bin/$name"; do
		if [ -n "$p" ] && [ -x "$p" ] && [ "$(go version -m "$p" 2>/dev/null | awk '$1 == "mod" { print $3 }')" = "$version" ]; then
			echo "$p"
			return
		fi
	done
	echo "deps: go install $pkg@$version" >&2
	GOBIN="$(go env GOPATH)/bin" go install "$pkg@$version" >&2
	echo "$(go env GOPATH)/bin/$name"
}

protoc_gen_go() {
	plugin protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
}

protoc_gen_go_vtproto() {
	plugin protoc-gen-go-vtproto github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto "$PROTOC_GEN_GO_VTPROTO_VERSION"
}

case "${1:-test}" in
test)
	need=()
	have lz4 || need+=(lz4)
	have protoc || need+=(protobuf-compiler)
	have gcc || need+=(gcc)
	# Static test programs need libc.a; gcc prints the bare name when it has none.
	if ! have gcc || [ "$(gcc -print-file-name=libc.a)" = libc.a ]; then need+=(libc6-dev); fi
	have make || need+=(make)
	have python3 || need+=(python3)
	have redis-server || need+=(redis-server)
	compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
	have nginx || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
	have ip || need+=(iproute2)
	have nft || need+=(nftables)
	[ -x /usr/bin/time ] || need+=(time)
	apt_install "${need[@]}"
	protoc_gen_go >/dev/null
	protoc_gen_go_vtproto >/dev/null
	;;
generate)
	have protoc || apt_install protobuf-compiler
	protoc_gen_go >/dev/null
	protoc_gen_go_vtproto >/dev/null
	;;
protoc-gen-go)
	protoc_gen_go
	;;
protoc-gen-go-vtproto)
	protoc_gen_go_vtproto
	;;
*)
	echo "usage: $0 [test|generate|protoc-gen-go|protoc-gen-go-vtproto]" >&2
	exit 2
	;;
esac
