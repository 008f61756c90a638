//! Gratuitous ARP (RFC 5227 §3 "ARP Announcement"): the frame that tells a LAN which MAC now
//! owns an address, so routers and real servers switch to a balancer that just took the VIP
//! or the gateway address without waiting for their ARP entries to expire. Pure.

use std::net::Ipv4Addr;

/// Ethernet + ARP, 42 bytes.
pub const FRAME_LEN: usize = 42;
pub const ETH_P_ARP: u16 = 0x0806;

/// An ARP announcement (a request with sender and target protocol address both `ip`) from
/// `mac`, broadcast.
pub fn announcement(mac: [u8; 6], ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address stays zero in an announcement.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use pnet_packet::arp::{ArpOperations, ArpPacket};
    use pnet_packet::ethernet::{EtherTypes, EthernetPacket};
    use pnet_packet::Packet;

    #[test]
    fn is_an_rfc5227_announcement() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let ip = Ipv4Addr::new(10, 0, 0, 100);
        let f = announcement(mac, ip);
        let eth = EthernetPacket::new(&f).unwrap();
        assert_eq!(eth.get_destination().octets(), [0xff; 6]);
        assert_eq!(eth.get_source().octets(), mac);
        assert_eq!(eth.get_ethertype(), EtherTypes::Arp);
        let arp = ArpPacket::new(eth.payload()).unwrap();
        assert_eq!(arp.get_operation(), ArpOperations::Request);
        assert_eq!(arp.get_sender_hw_addr().octets(), mac);
        assert_eq!(arp.get_sender_proto_addr(), ip);
        assert_eq!(arp.get_target_proto_addr(), ip);
        assert_eq!(arp.get_target_hw_addr().octets(), [0; 6]);
    }
}
