// Tests of nbd/uri.h: doc/uri.md's own examples verbatim, the choices uri.h documents where the
// spec leaves things to the client, every rejection with its message, and ToString round trips.
#include "nbd/uri.h"

#include <map>
#include <string>
#include <tuple>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nbd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Transport = NbdUri::Transport;

NbdUri ParseOrDie(const std::string& uri) {
  absl::StatusOr<NbdUri> parsed = ParseNbdUri(uri);
  EXPECT_TRUE(parsed.ok()) << uri << ": " << parsed.status();
  return parsed.ok() ? *parsed : NbdUri();
}

auto Fields(const NbdUri& uri) {
  return std::tie(uri.transport, uri.tls, uri.host, uri.port, uri.vsock_cid, uri.vsock_port,
                  uri.socket_path, uri.export_name, uri.tls_options, uri.inflight_limit);
}

// --- doc/uri.md examples, verbatim -------------------------------------------------------------

TEST(UriSpecExamples, ComponentsDiagramTcp) {
  const NbdUri uri = ParseOrDie("nbd://example.com:10809/export");
  EXPECT_EQ(uri.transport, Transport::kTcp);
  EXPECT_FALSE(uri.tls);
  EXPECT_EQ(uri.host, "example.com");
  EXPECT_EQ(uri.port, 10809);
  EXPECT_EQ(uri.export_name, "export");
  EXPECT_TRUE(uri.tls_options.empty());
}

TEST(UriSpecExamples, ComponentsDiagramUnix) {
  const NbdUri uri = ParseOrDie("nbd+unix:///export?socket=nbd.sock");
  EXPECT_EQ(uri.transport, Transport::kUnix);
  EXPECT_FALSE(uri.tls);
  EXPECT_EQ(uri.socket_path, "nbd.sock");
  EXPECT_EQ(uri.export_name, "export");
}

TEST(UriSpecExamples, ExportNameTable) {
  const std::pair<const char*, const char*> table[] = {
      {"nbd://example.com/disk", "disk"},   {"nbd+unix:///disk?socket=sock", "disk"},
      {"nbd://example.com/", ""},           {"nbd://example.com", ""},
      {"nbd://example.com//disk", "/disk"}, {"nbd://example.com/hello%20world", "hello world"},
  };
  for (const auto& [uri, export_name] : table) {
    EXPECT_EQ(ParseOrDie(uri).export_name, export_name) << uri;
  }
}

TEST(UriSpecExamples, AbstractSocket) {
  const NbdUri uri = ParseOrDie("nbd+unix:///?socket=%00/abstract");
  EXPECT_EQ(uri.socket_path, std::string("\0/abstract", 10));
  EXPECT_EQ(uri.export_name, "");
}

// --- Valid URIs ------------------------------------------------------------------------------

TEST(UriParse, TlsSchemes) {
  EXPECT_TRUE(ParseOrDie("nbds://example.com/disk").tls);
  const NbdUri unix_tls = ParseOrDie("nbds+unix:///disk?socket=/run/nbd.sock");
  EXPECT_TRUE(unix_tls.tls);
  EXPECT_EQ(unix_tls.transport, Transport::kUnix);
  const NbdUri vsock_tls = ParseOrDie("nbds+vsock://3/");
  EXPECT_TRUE(vsock_tls.tls);
  EXPECT_EQ(vsock_tls.transport, Transport::kVsock);
}

TEST(UriParse, SchemeIsCaseInsensitiveHostKeepsItsCase) {
  const NbdUri uri = ParseOrDie("NBDS+Unix:///?socket=/s");
  EXPECT_EQ(uri.transport, Transport::kUnix);
  EXPECT_TRUE(uri.tls);
  EXPECT_EQ(ParseOrDie("NBD://Example.COM/").host, "Example.COM");
}

TEST(UriParse, MissingHostMeansLocalhost) {
  EXPECT_EQ(ParseOrDie("nbd:///disk").host, "localhost");
  EXPECT_EQ(ParseOrDie("nbd://").host, "localhost");
  EXPECT_EQ(ParseOrDie("nbd://:10810/").port, 10810);
}

TEST(UriParse, Ipv4Host) {
  const NbdUri uri = ParseOrDie("nbd://192.0.2.7:10810/disk");
  EXPECT_EQ(uri.host, "192.0.2.7");
  EXPECT_EQ(uri.port, 10810);
}

TEST(UriParse, Ipv6Literals) {
  NbdUri uri = ParseOrDie("nbd://[::1]:10810/x");
  EXPECT_EQ(uri.host, "::1");
  EXPECT_EQ(uri.port, 10810);
  EXPECT_EQ(uri.export_name, "x");
  EXPECT_EQ(ParseOrDie("nbd://[::1]").port, 10809);
  EXPECT_EQ(ParseOrDie("nbd://[2001:DB8::7]/").host, "2001:DB8::7");
  EXPECT_EQ(ParseOrDie("nbd://[::ffff:192.0.2.1]/").host, "::ffff:192.0.2.1");
  uri = ParseOrDie("nbd://[fe80::1%25eth0]:10811/");
  EXPECT_EQ(uri.host, "fe80::1%eth0");
  EXPECT_EQ(uri.port, 10811);
}

TEST(UriParse, Ports) {
  EXPECT_EQ(ParseOrDie("nbd://h:1/").port, 1);
  EXPECT_EQ(ParseOrDie("nbd://h:65535/").port, 65535);
  EXPECT_EQ(ParseOrDie("nbd://h:010810/").port, 10810);
  // RFC 3986 3.2.3: an empty port is the default one.
  EXPECT_EQ(ParseOrDie("nbd://h:/disk").port, 10809);
}

TEST(UriParse, UserinfoIsTheTlsUsername) {
  const NbdUri uri = ParseOrDie("nbd://alice@example.com/");
  EXPECT_EQ(uri.host, "example.com");
  EXPECT_EQ(uri.tls_options, (std::map<std::string, std::string>{{"tls-username", "alice"}}));
  EXPECT_EQ(ParseOrDie("nbd://j%40doe@h/").tls_options.at("tls-username"), "j@doe");
}

TEST(UriParse, LibnbdUnixTlsExample) {
  const NbdUri uri = ParseOrDie("nbds+unix://alice@/?socket=/tmp/nbd.sock&tls-certificates=certs");
  EXPECT_EQ(uri.transport, Transport::kUnix);
  EXPECT_TRUE(uri.tls);
  EXPECT_EQ(uri.socket_path, "/tmp/nbd.sock");
  EXPECT_EQ(uri.tls_options, (std::map<std::string, std::string>{{"tls-certificates", "certs"},
                                                                 {"tls-username", "alice"}}));
}

TEST(UriParse, Vsock) {
  NbdUri uri = ParseOrDie("nbd+vsock:///");
  EXPECT_EQ(uri.transport, Transport::kVsock);
  EXPECT_EQ(uri.vsock_cid, 2u);  // VMADDR_CID_HOST
  EXPECT_EQ(uri.vsock_port, 10809u);
  uri = ParseOrDie("nbd+vsock://3:10810/export");
  EXPECT_EQ(uri.vsock_cid, 3u);
  EXPECT_EQ(uri.vsock_port, 10810u);
  EXPECT_EQ(uri.export_name, "export");
  uri = ParseOrDie("nbd+vsock://4294967294:4294967294/");
  EXPECT_EQ(uri.vsock_cid, 4294967294u);
  EXPECT_EQ(uri.vsock_port, 4294967294u);
  EXPECT_EQ(ParseOrDie("nbd+vsock://0/").vsock_cid, 0u);
}

TEST(UriParse, PercentDecoding) {
  EXPECT_EQ(ParseOrDie("nbd://h/%E2%82%ac").export_name, "\xE2\x82\xAC");
  EXPECT_EQ(ParseOrDie("nbd://h/a%2fb%3Fc%23d%25").export_name, "a/b?c#d%");
  EXPECT_EQ(ParseOrDie("nbd://ex%61mple.com/").host, "example.com");
  EXPECT_EQ(ParseOrDie("nbd+unix:///?socket=/run/nbd%20dir/s.sock").socket_path,
            "/run/nbd dir/s.sock");
  // '+' is an ordinary character in RFC 3986, not a space.
  EXPECT_EQ(ParseOrDie("nbd://h/a+b").export_name, "a+b");
}

TEST(UriParse, PathMayCarrySubDelimsColonAndAt) {
  EXPECT_EQ(ParseOrDie("nbd://h/a:b@c!$&'()*+,;=").export_name, "a:b@c!$&'()*+,;=");
}

TEST(UriParse, TlsQueryParameters) {
  const NbdUri uri = ParseOrDie(
      "nbds://h/disk?tls-type=psk&tls-psk-file=/keys.psk&tls-hostname=server.example"
      "&tls-verify-peer=0");
  EXPECT_EQ(uri.tls_options, (std::map<std::string, std::string>{
                                 {"tls-type", "psk"},
                                 {"tls-psk-file", "/keys.psk"},
                                 {"tls-hostname", "server.example"},
                                 {"tls-verify-peer", "0"},
                             }));
  EXPECT_EQ(ParseOrDie("nbd://h/?tls-username=bob").tls_options.at("tls-username"), "bob");
}

TEST(UriParse, TlsParametersAllowedWithOpportunisticTls) {
  // nbd:// and nbd+unix:// may negotiate TLS opportunistically (doc/uri.md), so they may tune it.
  EXPECT_EQ(ParseOrDie("nbd://h/?tls-verify-peer=1").tls_options.at("tls-verify-peer"), "1");
  EXPECT_EQ(ParseOrDie("nbd+unix:///?socket=/s&tls-type=anon").tls_options.at("tls-type"), "anon");
}

TEST(UriParse, QueryValueMayContainEqualsAndEmptyParametersAreIgnored) {
  EXPECT_EQ(ParseOrDie("nbd+unix:///?socket=/tmp/a=b").socket_path, "/tmp/a=b");
  EXPECT_EQ(ParseOrDie("nbd+unix:///?&socket=/s&&").socket_path, "/s");
  EXPECT_TRUE(ParseOrDie("nbd://h/?").tls_options.empty());
}

TEST(UriParse, InflightLimit) {
  EXPECT_FALSE(ParseOrDie("nbd://h/").inflight_limit.has_value());
  EXPECT_EQ(ParseOrDie("nbd://h/?inflight_limit=16").inflight_limit, 16u);
  EXPECT_EQ(ParseOrDie("nbd://h/?inflight_limit=1").inflight_limit, 1u);
  EXPECT_EQ(ParseOrDie("nbd://h/?inflight_limit=65536").inflight_limit, 65536u);
  EXPECT_EQ(ParseOrDie("nbd://h/?inflight_limit=auto").inflight_limit, 0u);
  EXPECT_EQ(ParseOrDie("nbd://h/?inflight_limit=0").inflight_limit, 0u);  // as ClientOptions
  EXPECT_EQ(ParseOrDie("nbd://h/?inflight_limit=%61uto").inflight_limit, 0u);
  const NbdUri unix_uri =
      ParseOrDie("nbds+unix:///d?socket=/s&inflight_limit=auto&tls-verify-peer=0");
  EXPECT_EQ(unix_uri.inflight_limit, 0u);
  EXPECT_EQ(unix_uri.socket_path, "/s");
  EXPECT_EQ(unix_uri.tls_options.at("tls-verify-peer"), "0");
}

// --- Invalid URIs ----------------------------------------------------------------------------

struct BadUri {
  const char* uri;
  std::vector<const char*> message_parts;
};

class UriRejects : public ::testing::TestWithParam<BadUri> {};

TEST_P(UriRejects, WithAMessageNamingThePart) {
  const BadUri& bad = GetParam();
  const absl::StatusOr<NbdUri> parsed = ParseNbdUri(bad.uri);
  ASSERT_FALSE(parsed.ok()) << bad.uri << " parsed as " << parsed->ToString();
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("invalid NBD URI \""));
  for (const char* part : bad.message_parts) {
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(part)) << bad.uri;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Scheme, UriRejects,
    ::testing::Values(
        BadUri{"", {"no scheme"}}, BadUri{"example.com/disk", {"no scheme"}},
        BadUri{"http://example.com/", {"scheme \"http\" is not an NBD scheme"}},
        BadUri{"nbd+tcp://h/", {"scheme \"nbd+tcp\" is not an NBD scheme", "nbds+vsock"}},
        BadUri{"nbd:/disk", {"after the scheme \"nbd:\" comes \"/disk\" instead of \"//\""}},
        BadUri{"nbd:disk", {"comes \"disk\" instead of \"//\""}},
        BadUri{"nbd://h/disk#part", {"fragment \"#part\" is not allowed"}}));

INSTANTIATE_TEST_SUITE_P(
    Authority, UriRejects,
    ::testing::Values(
        BadUri{"nbd://h:0/", {"port \"0\" is not a decimal number in 1..65535"}},
        BadUri{"nbd://h:65536/", {"port \"65536\" is not a decimal number in 1..65535"}},
        BadUri{"nbd://h:99999999999999999999/", {"port \"99999999999999999999\""}},
        BadUri{"nbd://h:12a/", {"port \"12a\""}}, BadUri{"nbd://h:-1/", {"port \"-1\""}},
        BadUri{"nbd://h:+1/", {"port \"+1\""}},
        BadUri{"nbd://[::1/", {"IPv6 host \"[::1\" lacks its closing ']'"}},
        BadUri{"nbd://[::1]x/", {"host \"[::1]x\" has \"x\" after ']'"}},
        BadUri{"nbd://[::g]/", {"host \"[::g]\" is not a valid IPv6 address"}},
        BadUri{"nbd://[192.0.2.1]/", {"host \"[192.0.2.1]\" is not a valid IPv6 address"}},
        BadUri{"nbd://::1/", {"host \"::1\" looks like an IPv6 address", "brackets"}},
        BadUri{"nbd://[v1.fe]/", {"host \"[v1.fe]\" is an IPvFuture literal"}},
        BadUri{"nbd://[fe80::1%eth0]/", {"has zone \"%eth0\"", "%25"}},
        BadUri{"nbd://[fe80::1%25]/", {"has zone \"%25\""}},
        BadUri{"nbd://h%00/", {"host \"h%00\" decodes to a string containing NUL"}},
        BadUri{"nbd://h^/", {"host \"h^\" contains \"^\" at position 1"}},
        BadUri{"nbd://@h/", {"userinfo before '@' is empty"}},
        BadUri{"nbd://a b@h/", {"userinfo \"a b\" contains \" \""}},
        BadUri{"nbd+vsock://abc/", {"vsock CID \"abc\" is not a decimal number"}},
        BadUri{"nbd+vsock://-3/", {"vsock CID \"-3\""}},
        BadUri{"nbd+vsock://4294967295/",
               {"vsock CID \"4294967295\" is not a decimal number in 0..4294967294"}},
        BadUri{"nbd+vsock://[::1]/", {"vsock CID \"[::1]\""}},
        BadUri{"nbd+vsock://3:4294967295/",
               {"vsock port \"4294967295\" is not a decimal number in 1..4294967294"}},
        BadUri{"nbd+vsock://3:0/", {"vsock port \"0\""}}));

INSTANTIATE_TEST_SUITE_P(
    Unix, UriRejects,
    ::testing::Values(
        BadUri{"nbd+unix:///disk", {"nbd+unix URIs need a socket=PATH query parameter"}},
        BadUri{"nbds+unix:///disk?tls-type=x509", {"nbds+unix URIs need a socket=PATH"}},
        BadUri{"nbd+unix://localhost/?socket=/s",
               {"host \"localhost\" given, but nbd+unix URIs name no host"}},
        BadUri{"nbd+unix://:10809/?socket=/s",
               {"port \"10809\" given, but nbd+unix URIs have no port"}},
        BadUri{"nbd://h/?socket=/s",
               {"socket=\"/s\" is only valid with nbd+unix and nbds+unix, not with nbd"}},
        BadUri{"nbd+vsock:///?socket=/s", {"not with nbd+vsock"}},
        BadUri{"nbd+unix:///?socket=", {"socket=\"\" must be a non-empty path"}},
        BadUri{"nbd+unix:///?socket=%00", {"socket=\"%00\" must be a non-empty path"}},
        BadUri{"nbd+unix:///?socket=/a%00b",
               {"socket=\"/a%00b\"", "NUL (%00) only as the first byte"}},
        BadUri{"nbd+unix:///?socket=/a&socket=/b",
               {"query parameter \"socket\" is given more than once"}},
        BadUri{"nbd+unix:///?socket=/a#b", {"fragment \"#b\""}},
        BadUri{
            "nbd+unix:///?socket=/a%g0",
            {"value of query parameter socket \"/a%g0\" has an invalid percent-escape \"%g0\""}}));

INSTANTIATE_TEST_SUITE_P(
    ExportName, UriRejects,
    ::testing::Values(
        BadUri{"nbd://h/a%2", {"export name \"a%2\" has an invalid percent-escape \"%2\""}},
        BadUri{"nbd://h/a%", {"export name \"a%\" has an invalid percent-escape \"%\""}},
        BadUri{"nbd://h/a%zz", {"export name \"a%zz\" has an invalid percent-escape \"%zz\""}},
        BadUri{"nbd://h/a%00b", {"export name \"a%00b\" decodes to a string containing NUL"}},
        BadUri{"nbd://h/my disk",
               {"export name \"my disk\" contains \" \" at position 2, which must be "
                "percent-encoded"}},
        BadUri{"nbd://h/caf\xc3\xa9",
               {"export name \"caf\\xc3\\xa9\" contains \"\\xc3\" at position 3"}},
        BadUri{"nbd://h/a[1]", {"export name \"a[1]\" contains \"[\""}}));

INSTANTIATE_TEST_SUITE_P(
    Query, UriRejects,
    ::testing::Values(
        BadUri{"nbd://h/?foo=bar",
               {"query parameter \"foo\" is not understood", "tls-verify-peer"}},
        BadUri{"nbd://h/?x-foo=bar", {"query parameter \"x-foo\" is not understood"}},
        BadUri{"nbd://h/?tls-verify-peer=yes", {"tls-verify-peer=\"yes\" must be 0 or 1"}},
        BadUri{"nbd://h/?tls-type=kerberos", {"tls-type=\"kerberos\" must be anon, x509 or psk"}},
        BadUri{"nbd://h/?tls-hostname", {"query parameter \"tls-hostname\" has no '='"}},
        BadUri{"nbd://h/?tls-hostname=", {"query parameter tls-hostname has an empty value"}},
        BadUri{"nbd://h/?tls-hostname=a%zz",
               {"value of query parameter tls-hostname \"a%zz\" has an invalid percent-escape"}},
        BadUri{"nbd://h/?tls-hostname=a%00", {"decodes to a string containing NUL"}},
        BadUri{"nbd://h/?tls-type=psk&tls-type=psk",
               {"query parameter \"tls-type\" is given more than once"}},
        BadUri{"nbd://alice@h/?tls-username=bob",
               {"tls-username=\"bob\" repeats the user name already given before '@'"}},
        BadUri{"nbd://h/?tls%2Dtype=x", {"tls-type=\"x\" must be"}},
        BadUri{"nbd://h/?a b=1", {"query parameter name \"a b\" contains \" \""}},
        BadUri{"nbd://h/?inflight_limit=65537",
               {"inflight_limit=\"65537\" must be auto or a number from 1 to 65536"}},
        BadUri{"nbd://h/?inflight_limit=99999999999", {"inflight_limit=\"99999999999\""}},
        BadUri{"nbd://h/?inflight_limit=-1", {"inflight_limit=\"-1\" must be auto"}},
        BadUri{"nbd://h/?inflight_limit=+4", {"inflight_limit=\"+4\" must be auto"}},
        BadUri{"nbd://h/?inflight_limit=AUTO", {"inflight_limit=\"AUTO\" must be auto"}},
        BadUri{"nbd://h/?inflight_limit=", {"inflight_limit=\"\" must be auto"}},
        BadUri{"nbd://h/?inflight_limit=16k", {"inflight_limit=\"16k\" must be auto"}},
        BadUri{"nbd://h/?inflight_limit=8&inflight_limit=8",
               {"query parameter \"inflight_limit\" is given more than once"}},
        BadUri{"nbd://h/?inflight-limit=8",
               {"query parameter \"inflight-limit\" is not understood", "inflight_limit"}}));

TEST(UriRejectsPassword, WithoutRepeatingIt) {
  const absl::StatusOr<NbdUri> parsed = ParseNbdUri("nbd://alice:s3cret@h/disk");
  ASSERT_FALSE(parsed.ok());
  const std::string message(parsed.status().message());
  EXPECT_THAT(message, HasSubstr("userinfo \"alice\" is followed by a password"));
  EXPECT_THAT(message, HasSubstr("\"nbd://alice:****@h/disk\""));
  EXPECT_THAT(message, Not(HasSubstr("s3cret")));
}

// --- ToString --------------------------------------------------------------------------------

TEST(UriToString, CanonicalForms) {
  const std::pair<const char*, const char*> table[] = {
      {"nbd://example.com:10809/export", "nbd://example.com/export"},
      {"nbd://example.com", "nbd://example.com/"},
      {"NBD://Example.com:10810", "nbd://Example.com:10810/"},
      {"nbd:///", "nbd://localhost/"},
      {"nbd://[::1]:10810/x", "nbd://[::1]:10810/x"},
      {"nbd://[fe80::1%25eth0]/", "nbd://[fe80::1%25eth0]/"},
      {"nbd://example.com/hello%20world", "nbd://example.com/hello%20world"},
      {"nbd://example.com//disk", "nbd://example.com//disk"},
      {"nbd://h/a%2fb", "nbd://h/a/b"},  // '/' needs no escape in a path
      {"nbd://h/%e2%82%ac", "nbd://h/%E2%82%AC"},
      {"nbd+unix:///?socket=%00/abstract", "nbd+unix:///?socket=%00/abstract"},
      {"nbds+unix://alice@/?socket=/tmp/nbd.sock&tls-certificates=certs",
       "nbds+unix://alice@/?socket=/tmp/nbd.sock&tls-certificates=certs"},
      {"nbd://h/?tls-username=bob&tls-verify-peer=0&tls-hostname=x",
       "nbd://bob@h/?tls-hostname=x&tls-verify-peer=0"},
      {"nbd+vsock:///", "nbd+vsock://2/"},
      {"nbds+vsock://3:10810/e", "nbds+vsock://3:10810/e"},
      {"nbd+unix:///?socket=/tmp/a=b", "nbd+unix:///?socket=/tmp/a%3Db"},
      {"nbd://h/?tls-verify-peer=0&inflight_limit=0",
       "nbd://h/?inflight_limit=auto&tls-verify-peer=0"},
      {"nbd+unix:///?inflight_limit=0032&socket=/s", "nbd+unix:///?socket=/s&inflight_limit=32"},
  };
  for (const auto& [uri, canonical] : table) {
    EXPECT_EQ(ParseOrDie(uri).ToString(), canonical) << uri;
  }
}

TEST(UriToString, EncodesWhatWouldChangeTheMeaning) {
  NbdUri uri;
  uri.transport = Transport::kUnix;
  uri.tls = true;
  uri.socket_path = "/tmp/x&tls-type=psk#?";
  uri.export_name = "a b#c?d%e";
  uri.tls_options = {{"tls-username", "j:doe@x"}, {"tls-hostname", "a&b=c"}};
  EXPECT_EQ(uri.ToString(),
            "nbds+unix://j%3Adoe%40x@/a%20b%23c%3Fd%25e"
            "?socket=/tmp/x%26tls-type%3Dpsk%23?&tls-hostname=a%26b%3Dc");
  const NbdUri reparsed = ParseOrDie(uri.ToString());
  EXPECT_EQ(Fields(reparsed), Fields(uri));
}

TEST(UriToString, Ipv6HostWithZoneRoundTrips) {
  NbdUri uri;
  uri.host = "fe80::1%en 0";
  uri.port = 1;
  EXPECT_EQ(uri.ToString(), "nbd://[fe80::1%25en%200]:1/");
  EXPECT_EQ(Fields(ParseOrDie(uri.ToString())), Fields(uri));
}

TEST(UriToString, RoundTripsEveryValidExample) {
  const char* const uris[] = {
      "nbd://example.com:10809/export",
      "nbd+unix:///export?socket=nbd.sock",
      "nbd://example.com//disk",
      "nbd://example.com/hello%20world",
      "nbd+unix:///?socket=%00/abstract",
      "nbds://alice@[2001:db8::1]:999/%E2%82%AC?tls-type=x509&tls-certificates=/etc/pki",
      "nbd://h/a:b@c!$&'()*+,;=",
      "nbd://h:/disk",
      "nbd+vsock://4294967294:4294967294/",
      "nbds+unix:///x?socket=/run/nbd%20dir/s.sock&tls-psk-file=/k&tls-verify-peer=1",
      "nbd://ex%61mple.com/",
      "nbd+unix:///?socket=/s&inflight_limit=auto",
      "nbds://h/?inflight_limit=256&tls-type=x509",
  };
  for (const char* text : uris) {
    const NbdUri first = ParseOrDie(text);
    const std::string canonical = first.ToString();
    const NbdUri second = ParseOrDie(canonical);
    EXPECT_EQ(Fields(second), Fields(first)) << text << " -> " << canonical;
    EXPECT_EQ(second.ToString(), canonical) << text;
  }
}

}  // namespace
}  // namespace nbd
