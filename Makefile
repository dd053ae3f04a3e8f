# Entry points. `make up` and `make test` are the two commands of the README.

.PHONY: up down test sim sim-long build

## Bring up the main job: the local Kubernetes test bed (see README for what it runs today).
up:
	scripts/up.sh

## Tear down what `make up` started.
down:
	e2e/cluster.sh down

## The whole test suite, as CI runs it.
test:
	scripts/test.sh

build:
	cargo build --release --workspace

## The simulator on the default 2,000 seeds, and the long 100,000-seed run.
sim: build
	target/release/pbft-sim --seeds 2000

sim-long: build
	target/release/pbft-sim --seeds 100000
