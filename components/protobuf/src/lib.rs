//! Kubernetes protobuf bodies to Kubernetes JSON (work in progress).
