//! The host side of `wit/peer.wit`. The one `bindgen!` of the crate; the
//! rest uses the re-exported types. WASI interfaces map to wasmtime-wasi's.

#![allow(
    missing_docs,
    reason = "generated from wit/peer.wit, which carries the docs"
)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "peer",
    exports: { default: async },
    imports: { "peerhost:peer/peers": async },
    with: {
        "wasi": wasmtime_wasi::p2::bindings,
    },
});

pub use self::exports::peerhost::peer::invocation::{
    CallRequest, GuestLimits, LogicModule, Request, ScriptRequest,
};
pub use self::peerhost::peer::types::{Denial, Error as GuestError, InvocationKind};
