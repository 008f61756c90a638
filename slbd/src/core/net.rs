//! Small address types shared by the config, the ruleset and the data path: an IPv4 prefix and
//! the layer-4 protocol enum.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network in CIDR notation whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("expected ADDRESS/PREFIX")]
    MissingSlash,
    #[error("{0:?} is not an IPv4 address")]
    Address(String),
    #[error("prefix length {0:?} is not a number from 0 to 32")]
    Prefix(String),
    #[error("host bits are set (did you mean {0}?)")]
    HostBits(Ipv4Net),
}

impl Ipv4Net {
    /// A network from an address and prefix; host bits must already be zero.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 32 {
            return Err(CidrError::Prefix(prefix.to_string()));
        }
        let net = Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        };
        if net.addr != addr {
            return Err(CidrError::HostBits(net));
        }
        Ok(net)
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix))
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl FromStr for Ipv4Net {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (a, p) = s.split_once('/').ok_or(CidrError::MissingSlash)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| CidrError::Address(a.to_string()))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| CidrError::Prefix(p.to_string()))?;
        Ipv4Net::new(addr, prefix)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The layer-4 protocols slbd balances, with their IP protocol numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Protocol {
    Tcp = 6,
    Udp = 17,
}

impl Protocol {
    pub fn from_ip_proto(p: u8) -> Option<Protocol> {
        match p {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(()),
        }
    }
}

/// One address slbd was told to own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedAddr {
    pub dev: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
}

impl std::fmt::Display for ManagedAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} dev {}", self.ip, self.prefix, self.dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_cidr() {
        let n: Ipv4Net = "172.16.0.0/24".parse().unwrap();
        assert!(n.contains("172.16.0.9".parse().unwrap()));
        assert!(!n.contains("172.16.1.9".parse().unwrap()));
        assert_eq!(n.broadcast(), Ipv4Addr::new(172, 16, 0, 255));
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            "172.16.0.1/24".parse::<Ipv4Net>(),
            Err(CidrError::HostBits("172.16.0.0/24".parse().unwrap()))
        );
        assert_eq!(
            "172.16.0.0".parse::<Ipv4Net>(),
            Err(CidrError::MissingSlash)
        );
        assert!(matches!(
            "1.2.3.4/33".parse::<Ipv4Net>(),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(
            "1.2.3/8".parse::<Ipv4Net>(),
            Err(CidrError::Address(_))
        ));
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
    }
}
