//! Listen addresses as operators write them in slb_conf.json and amgr.json. Pure.

use std::net::SocketAddr;

/// A TCP listen address with an explicit, non-zero port (`"0.0.0.0:9405"`, `"[::1]:9405"`);
/// the error names what is wrong, with `example_port` in the example.
pub fn parse_listen(value: &str, example_port: u16) -> Result<SocketAddr, String> {
    match value.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a),
        Ok(_) => Err("the port must not be 0".into()),
        Err(_) => Err(format!(
            "{value:?} is not an address:port (e.g. \"0.0.0.0:{example_port}\")"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_v4_and_v6_with_a_port_and_names_what_is_wrong() {
        assert_eq!(
            parse_listen("0.0.0.0:9405", 9405).unwrap(),
            "0.0.0.0:9405".parse().unwrap()
        );
        assert!(parse_listen("[::1]:9406", 9406).is_ok());
        assert_eq!(
            parse_listen("0.0.0.0:0", 9405).unwrap_err(),
            "the port must not be 0"
        );
        let e = parse_listen("localhost", 9406).unwrap_err();
        assert!(e.contains("\"localhost\" is not an address:port"), "{e}");
        assert!(e.contains("0.0.0.0:9406"), "{e}");
    }
}
