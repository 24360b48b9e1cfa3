#!/usr/bin/env bash
# deps.sh installs, with apt-get and go install, what crpipe's tests and
# generators need, only when it is missing. Idempotent and quiet: it prints
# one line per install and nothing when all is there.
#
#   scripts/deps.sh test            tools the tests use (lz4, protoc, gcc, ...)
#   scripts/deps.sh generate        protoc and protoc-gen-go for make generate
#   scripts/deps.sh protoc-gen-go   ensure protoc-gen-go and print its path
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.12

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

# protoc_gen_go prints the path of a protoc-gen-go of the pinned version,
# installing it with go install when there is none.
protoc_gen_go() {
	local p
	for p in "$(command -v protoc-gen-go 2>/dev/null || true)" "$(go env GOPATH)/bin/protoc-gen-go"; do
		if [ -n "$p" ] && [ -x "$p" ] && [ "$("$p" --version 2>/dev/null)" = "protoc-gen-go $PROTOC_GEN_GO_VERSION" ]; then
			echo "$p"
			return
		fi
	done
	echo "deps: go install google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION" >&2
	GOBIN="$(go env GOPATH)/bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION" >&2
	echo "$(go env GOPATH)/bin/protoc-gen-go"
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
	;;
generate)
	have protoc || apt_install protobuf-compiler
	protoc_gen_go >/dev/null
	;;
protoc-gen-go)
	protoc_gen_go
	;;
*)
	echo "usage: $0 [test|generate|protoc-gen-go]" >&2
	exit 2
	;;
esac
