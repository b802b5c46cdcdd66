// nbd/uri.cc — NBD URI parsing and printing; the accepted forms are documented in uri.h.
#include "nbd/uri.h"

#include <arpa/inet.h>

#include <cstdint>
#include <string>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "nbd/wire.h"

namespace nbd {
namespace {

// The IANA-assigned NBD port, the default for TCP (doc/uri.md) and, following libnbd, vsock.
constexpr uint32_t kDefaultPortNumber = kDefaultPort;
// VMADDR_CID_HOST: with no CID the client is inside a VM and means its hypervisor, as libnbd
// does for "nbd+vsock:///". Spelled out so the parser needs no <linux/vm_sockets.h>.
constexpr uint32_t kVsockCidHost = 2;
// VMADDR_CID_ANY / VMADDR_PORT_ANY are wildcards for bind(), not addresses to connect to.
constexpr uint32_t kVsockAny = UINT32_MAX;

// Characters RFC 3986 lets each component carry unencoded, beyond the unreserved ones
// (ALPHA DIGIT - . _ ~). Everything else must arrive percent-encoded.
constexpr absl::string_view kRegNameChars = "!$&'()*+,;=";    // 3.2.2 reg-name
constexpr absl::string_view kUserinfoChars = "!$&'()*+,;=:";  // 3.2.1 userinfo
constexpr absl::string_view kPathChars = "!$&'()*+,;=:@/";    // 3.3 pchar and '/'
// 3.4 query, minus the '&' that separates parameters: '=' is allowed in a value because only
// the first '=' of a parameter separates key and value.
constexpr absl::string_view kQueryChars = "!$'()*+,;=:@/?";
constexpr absl::string_view kZoneIdChars = "";  // RFC 6874 ZoneID
// What ToString leaves unencoded: the sets above minus the characters that would change the
// meaning on re-parsing ("&" and "=" in query parameters, ":" in a username).
constexpr absl::string_view kQueryValueOutputChars = "!$'()*+,;:@/?";
constexpr absl::string_view kUsernameOutputChars = "!$&'()*+,;=";

// The query parameters this parser understands; doc/uri.md says others "SHOULD be diagnosed".
// tls-type, tls-hostname and tls-verify-peer come from doc/uri.md; tls-certificates,
// tls-psk-file and tls-username are libnbd's names for the same purposes.
constexpr absl::string_view kSocketKey = "socket";
// nbdring's own: ClientOptions::inflight_limit from the URI.
constexpr absl::string_view kInflightLimitKey = "inflight_limit";
constexpr uint32_t kMaxInflightLimit = 65536;
constexpr absl::string_view kTlsUsernameKey = "tls-username";
constexpr absl::string_view kTlsKeys[] = {"tls-certificates", "tls-hostname",  "tls-psk-file",
                                          "tls-type",         kTlsUsernameKey, "tls-verify-peer"};

struct Scheme {
  absl::string_view name;
  NbdUri::Transport transport;
  bool tls;
};
// doc/uri.md defines the first four; the vsock pair is libnbd's (the spec allows other names).
constexpr Scheme kSchemes[] = {
    {"nbd", NbdUri::Transport::kTcp, false},
    {"nbds", NbdUri::Transport::kTcp, true},
    {"nbd+unix", NbdUri::Transport::kUnix, false},
    {"nbds+unix", NbdUri::Transport::kUnix, true},
    {"nbd+vsock", NbdUri::Transport::kVsock, false},
    {"nbds+vsock", NbdUri::Transport::kVsock, true},
};

absl::string_view SchemeName(NbdUri::Transport transport, bool tls) {
  for (const Scheme& scheme : kSchemes) {
    if (scheme.transport == transport && scheme.tls == tls) return scheme.name;
  }
  return "nbd";
}

bool IsUnreserved(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_' ||
         c == '~';
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string Quote(absl::string_view text) {
  return absl::StrCat("\"", absl::CHexEscape(text), "\"");
}

std::string PercentEncode(absl::string_view text, absl::string_view unencoded_chars) {
  std::string out;
  for (char c : text) {
    if (IsUnreserved(c) || absl::StrContains(unencoded_chars, c)) {
      out.push_back(c);
    } else {
      absl::StrAppend(&out, absl::StrFormat("%%%02X", static_cast<unsigned char>(c)));
    }
  }
  return out;
}

bool AllDigits(absl::string_view text) {
  return !text.empty() && absl::c_all_of(text, [](char c) {
    return absl::ascii_isdigit(static_cast<unsigned char>(c));
  });
}

class Parser {
 public:
  explicit Parser(absl::string_view uri) : uri_(uri), uri_for_messages_(uri) {}

  absl::StatusOr<NbdUri> Parse();

 private:
  absl::Status Error(absl::string_view detail) const {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid NBD URI ", Quote(uri_for_messages_), ": ", detail));
  }

  // Checks that `text` (the URI's `part`) uses only characters allowed unencoded there, and
  // decodes its percent-escapes. NUL bytes are the caller's business: only socket= may start
  // with one.
  absl::StatusOr<std::string> Decode(absl::string_view part, absl::string_view text,
                                     absl::string_view allowed_chars) const;
  absl::StatusOr<std::string> DecodeWithoutNul(absl::string_view part, absl::string_view text,
                                               absl::string_view allowed_chars) const;

  absl::Status ParseScheme(absl::string_view scheme);
  absl::Status ParseAuthority(absl::string_view authority);
  absl::Status ParseHost(absl::string_view host);
  absl::Status ParsePort(absl::string_view port);
  absl::Status ParseQuery(absl::string_view query);
  absl::Status CheckTlsOption(const std::string& key, const std::string& value) const;

  absl::string_view uri_;
  // The URI as quoted in error messages: `uri_`, or with a password blanked out.
  std::string uri_for_messages_;
  absl::string_view scheme_name_;
  NbdUri result_;
  bool have_socket_ = false;
};

absl::StatusOr<std::string> Parser::Decode(absl::string_view part, absl::string_view text,
                                           absl::string_view allowed_chars) const {
  std::string decoded;
  decoded.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '%') {
      const int high = i + 1 < text.size() ? HexValue(text[i + 1]) : -1;
      const int low = i + 2 < text.size() ? HexValue(text[i + 2]) : -1;
      if (high < 0 || low < 0) {
        return Error(absl::StrCat(part, " ", Quote(text), " has an invalid percent-escape ",
                                  Quote(text.substr(i, 3)),
                                  " (a '%' must be followed by two hex digits)"));
      }
      decoded.push_back(static_cast<char>(high << 4 | low));
      i += 2;
    } else if (IsUnreserved(c) || absl::StrContains(allowed_chars, c)) {
      decoded.push_back(c);
    } else {
      return Error(absl::StrCat(part, " ", Quote(text), " contains ",
                                Quote(absl::string_view(&c, 1)), " at position ", i,
                                ", which must be percent-encoded"));
    }
  }
  return decoded;
}

absl::StatusOr<std::string> Parser::DecodeWithoutNul(absl::string_view part, absl::string_view text,
                                                     absl::string_view allowed_chars) const {
  absl::StatusOr<std::string> decoded = Decode(part, text, allowed_chars);
  if (decoded.ok() && absl::StrContains(*decoded, '\0')) {
    return Error(absl::StrCat(part, " ", Quote(text), " decodes to a string containing NUL (%00)"));
  }
  return decoded;
}

absl::Status Parser::ParseScheme(absl::string_view scheme) {
  const std::string lower = absl::AsciiStrToLower(scheme);  // RFC 3986 3.1: case-insensitive
  for (const Scheme& known : kSchemes) {
    if (lower == known.name) {
      scheme_name_ = known.name;
      result_.transport = known.transport;
      result_.tls = known.tls;
      return absl::OkStatus();
    }
  }
  std::vector<absl::string_view> names;
  for (const Scheme& known : kSchemes) names.push_back(known.name);
  return Error(absl::StrCat("scheme ", Quote(scheme), " is not an NBD scheme (expected one of ",
                            absl::StrJoin(names, ", "), ")"));
}

absl::Status Parser::ParseAuthority(absl::string_view authority) {
  absl::string_view host_and_port = authority;
  if (const size_t at = authority.rfind('@'); at != absl::string_view::npos) {
    const absl::string_view userinfo = authority.substr(0, at);
    host_and_port = authority.substr(at + 1);
    if (const size_t colon = userinfo.find(':'); colon != absl::string_view::npos) {
      // Never echo a password: blank it in the quoted URI too.
      const size_t password_start = (userinfo.data() - uri_.data()) + colon + 1;
      uri_for_messages_ = absl::StrCat(uri_.substr(0, password_start), "****",
                                       uri_.substr(password_start + (at - colon - 1)));
      return Error(absl::StrCat("userinfo ", Quote(userinfo.substr(0, colon)),
                                " is followed by a password; NBD URIs carry only a TLS user name"));
    }
    absl::StatusOr<std::string> username = DecodeWithoutNul("userinfo", userinfo, kUserinfoChars);
    if (!username.ok()) return username.status();
    if (username->empty()) return Error("userinfo before '@' is empty");
    result_.tls_options[std::string(kTlsUsernameKey)] = *std::move(username);
  }

  absl::string_view host = host_and_port;
  absl::string_view port;
  bool have_port = false;
  if (absl::StartsWith(host_and_port, "[")) {
    const size_t close = host_and_port.find(']');
    if (close == absl::string_view::npos) {
      return Error(absl::StrCat("IPv6 host ", Quote(host_and_port), " lacks its closing ']'"));
    }
    host = host_and_port.substr(0, close + 1);
    const absl::string_view after = host_and_port.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') {
        return Error(absl::StrCat("host ", Quote(host_and_port), " has ", Quote(after),
                                  " after ']' where only \":port\" may follow"));
      }
      port = after.substr(1);
      have_port = true;
    }
  } else if (const size_t colon = host_and_port.rfind(':'); colon != absl::string_view::npos) {
    host = host_and_port.substr(0, colon);
    port = host_and_port.substr(colon + 1);
    have_port = true;
    if (absl::StrContains(host, ':')) {
      return Error(absl::StrCat("host ", Quote(host_and_port),
                                " looks like an IPv6 address, which must be written in brackets "
                                "(\"[::1]:10809\")"));
    }
  }

  if (result_.transport == NbdUri::Transport::kUnix) {
    // doc/uri.md leaves this to the client; a host here is a mistake, not a hint.
    if (!host.empty()) {
      return Error(absl::StrCat("host ", Quote(host), " given, but ", scheme_name_,
                                " URIs name no host (use \"", scheme_name_,
                                ":///export?socket=PATH\")"));
    }
    if (have_port) {
      return Error(
          absl::StrCat("port ", Quote(port), " given, but ", scheme_name_, " URIs have no port"));
    }
    return absl::OkStatus();
  }
  if (absl::Status status = ParseHost(host); !status.ok()) return status;
  // RFC 3986 3.2.3: an empty port ("host:") means the default.
  if (have_port && !port.empty()) return ParsePort(port);
  return absl::OkStatus();
}

absl::Status Parser::ParseHost(absl::string_view host) {
  if (result_.transport == NbdUri::Transport::kVsock) {
    if (host.empty()) {
      result_.vsock_cid = kVsockCidHost;
      return absl::OkStatus();
    }
    uint32_t cid = 0;
    if (!AllDigits(host) || !absl::SimpleAtoi(host, &cid) || cid == kVsockAny) {
      return Error(absl::StrCat("vsock CID ", Quote(host), " is not a decimal number in 0..",
                                kVsockAny - 1));
    }
    result_.vsock_cid = cid;
    return absl::OkStatus();
  }

  if (host.empty()) {
    // doc/uri.md leaves a missing TCP host to the client; libnbd and qemu use localhost.
    result_.host = "localhost";
    return absl::OkStatus();
  }
  if (host.front() != '[') {
    absl::StatusOr<std::string> name = DecodeWithoutNul("host", host, kRegNameChars);
    if (!name.ok()) return name.status();
    result_.host = *std::move(name);
    return absl::OkStatus();
  }

  // RFC 3986 3.2.2 IP-literal, with an RFC 6874 zone ("[fe80::1%25eth0]").
  const absl::string_view literal = host.substr(1, host.size() - 2);
  if (!literal.empty() && (literal[0] == 'v' || literal[0] == 'V')) {
    return Error(
        absl::StrCat("host ", Quote(host), " is an IPvFuture literal, which is not supported"));
  }
  absl::string_view address = literal;
  std::string zone;
  if (const size_t percent = literal.find('%'); percent != absl::string_view::npos) {
    address = literal.substr(0, percent);
    const absl::string_view encoded_zone = literal.substr(percent);
    if (!absl::StartsWith(encoded_zone, "%25") || encoded_zone.size() == 3) {
      return Error(absl::StrCat("IPv6 host ", Quote(host), " has zone ", Quote(encoded_zone),
                                "; a zone is written \"%25\" followed by its name"));
    }
    absl::StatusOr<std::string> decoded =
        DecodeWithoutNul("IPv6 zone", encoded_zone.substr(3), kZoneIdChars);
    if (!decoded.ok()) return decoded.status();
    zone = *std::move(decoded);
  }
  in6_addr parsed;
  if (inet_pton(AF_INET6, std::string(address).c_str(), &parsed) != 1) {
    return Error(absl::StrCat("host ", Quote(host), " is not a valid IPv6 address"));
  }
  result_.host = zone.empty() ? std::string(address) : absl::StrCat(address, "%", zone);
  return absl::OkStatus();
}

absl::Status Parser::ParsePort(absl::string_view port) {
  const bool vsock = result_.transport == NbdUri::Transport::kVsock;
  const uint32_t maximum = vsock ? kVsockAny - 1 : UINT16_MAX;
  uint32_t value = 0;
  if (!AllDigits(port) || !absl::SimpleAtoi(port, &value) || value == 0 || value > maximum) {
    return Error(absl::StrCat(vsock ? "vsock port " : "port ", Quote(port),
                              " is not a decimal number in 1..", maximum));
  }
  if (vsock) {
    result_.vsock_port = value;
  } else {
    result_.port = static_cast<uint16_t>(value);
  }
  return absl::OkStatus();
}

absl::Status Parser::CheckTlsOption(const std::string& key, const std::string& value) const {
  if (value.empty()) {
    return Error(absl::StrCat("query parameter ", key, " has an empty value"));
  }
  // doc/uri.md lists the values of these two; anything else would be silently misread.
  if (key == "tls-verify-peer" && value != "0" && value != "1") {
    return Error(absl::StrCat("query parameter tls-verify-peer=", Quote(value), " must be 0 or 1"));
  }
  if (key == "tls-type" && value != "anon" && value != "x509" && value != "psk") {
    return Error(
        absl::StrCat("query parameter tls-type=", Quote(value), " must be anon, x509 or psk"));
  }
  if (key == kTlsUsernameKey && result_.tls_options.count(key) != 0) {
    return Error(absl::StrCat("query parameter tls-username=", Quote(value),
                              " repeats the user name already given before '@' in the authority"));
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseQuery(absl::string_view query) {
  std::vector<std::string> seen;
  // '&' separates parameters; empty ones ("a=1&&b=2", a trailing '&') carry nothing.
  for (absl::string_view parameter : absl::StrSplit(query, '&', absl::SkipEmpty())) {
    const size_t equals = parameter.find('=');
    if (equals == absl::string_view::npos) {
      return Error(absl::StrCat("query parameter ", Quote(parameter), " has no '=' and value"));
    }
    absl::StatusOr<std::string> key =
        DecodeWithoutNul("query parameter name", parameter.substr(0, equals), kQueryChars);
    if (!key.ok()) return key.status();
    if (absl::c_linear_search(seen, *key)) {
      return Error(absl::StrCat("query parameter ", Quote(*key), " is given more than once"));
    }
    seen.push_back(*key);
    const absl::string_view raw_value = parameter.substr(equals + 1);
    const std::string value_part = absl::StrCat("value of query parameter ", *key);

    if (*key == kSocketKey) {
      if (result_.transport != NbdUri::Transport::kUnix) {
        return Error(absl::StrCat("query parameter socket=", Quote(raw_value),
                                  " is only valid with nbd+unix and nbds+unix, not with ",
                                  scheme_name_));
      }
      absl::StatusOr<std::string> path = Decode(value_part, raw_value, kQueryChars);
      if (!path.ok()) return path.status();
      // doc/uri.md: a leading NUL names a socket in Linux's abstract namespace; anywhere
      // else it would truncate the path.
      const bool abstract_without_name = *path == std::string(1, '\0');
      if (path->empty() || abstract_without_name || path->find('\0', 1) != std::string::npos) {
        return Error(absl::StrCat("query parameter socket=", Quote(raw_value),
                                  " must be a non-empty path, with NUL (%00) only as the first "
                                  "byte of an abstract socket name"));
      }
      result_.socket_path = *std::move(path);
      have_socket_ = true;
      continue;
    }
    if (*key == kInflightLimitKey) {
      absl::StatusOr<std::string> value = DecodeWithoutNul(value_part, raw_value, kQueryChars);
      if (!value.ok()) return value.status();
      uint32_t limit = 0;
      if (*value != "auto" &&
          (!AllDigits(*value) || value->size() > 5 || !absl::SimpleAtoi(*value, &limit) ||
           limit > kMaxInflightLimit)) {
        return Error(absl::StrCat("query parameter inflight_limit=", Quote(raw_value),
                                  " must be auto or a number from 1 to ", kMaxInflightLimit));
      }
      result_.inflight_limit = limit;  // "auto" (and 0) is 0
      continue;
    }
    if (!absl::c_linear_search(kTlsKeys, *key)) {
      return Error(absl::StrCat("query parameter ", Quote(*key),
                                " is not understood (known: socket, inflight_limit, ",
                                absl::StrJoin(kTlsKeys, ", "), ")"));
    }
    absl::StatusOr<std::string> value = DecodeWithoutNul(value_part, raw_value, kQueryChars);
    if (!value.ok()) return value.status();
    if (absl::Status status = CheckTlsOption(*key, *value); !status.ok()) return status;
    result_.tls_options[*key] = *std::move(value);
  }
  if (result_.transport == NbdUri::Transport::kUnix && !have_socket_) {
    return Error(absl::StrCat(scheme_name_, " URIs need a socket=PATH query parameter"));
  }
  return absl::OkStatus();
}

absl::StatusOr<NbdUri> Parser::Parse() {
  const size_t colon = uri_.find(':');
  if (colon == absl::string_view::npos) {
    return Error("no scheme (expected \"nbd://\", \"nbd+unix://\", ...)");
  }
  if (absl::Status status = ParseScheme(uri_.substr(0, colon)); !status.ok()) return status;

  absl::string_view rest = uri_.substr(colon + 1);
  // The "scheme://" form keeps the export name unambiguous: without an authority,
  // "nbd:disk" and "nbd:/disk" would need rules of their own.
  if (!absl::ConsumePrefix(&rest, "//")) {
    return Error(absl::StrCat("after the scheme ", Quote(uri_.substr(0, colon + 1)), " comes ",
                              Quote(rest), " instead of \"//\""));
  }
  if (const size_t hash = rest.find('#'); hash != absl::string_view::npos) {
    return Error(absl::StrCat("fragment ", Quote(rest.substr(hash)),
                              " is not allowed (a '#' in a name must be written %23)"));
  }
  absl::string_view query;
  bool have_query = false;
  if (const size_t question = rest.find('?'); question != absl::string_view::npos) {
    query = rest.substr(question + 1);
    rest = rest.substr(0, question);
    have_query = true;
  }
  const size_t slash = rest.find('/');
  const absl::string_view authority = rest.substr(0, slash);
  const absl::string_view path =
      slash == absl::string_view::npos ? absl::string_view() : rest.substr(slash);

  if (absl::Status status = ParseAuthority(authority); !status.ok()) return status;

  // doc/uri.md: the export name is the path without its leading '/'.
  absl::StatusOr<std::string> export_name =
      DecodeWithoutNul("export name", path.empty() ? path : path.substr(1), kPathChars);
  if (!export_name.ok()) return export_name.status();
  result_.export_name = *std::move(export_name);

  if (absl::Status status = ParseQuery(have_query ? query : absl::string_view()); !status.ok()) {
    return status;
  }
  return std::move(result_);
}

}  // namespace

std::string NbdUri::ToString() const {
  std::string out = absl::StrCat(SchemeName(transport, tls), "://");
  if (const auto username = tls_options.find(std::string(kTlsUsernameKey));
      username != tls_options.end()) {
    absl::StrAppend(&out, PercentEncode(username->second, kUsernameOutputChars), "@");
  }
  switch (transport) {
    case Transport::kTcp:
      if (absl::StrContains(host, ':')) {
        // An IPv6 literal; its zone separator '%' is itself written %25 (RFC 6874).
        const size_t percent = host.find('%');
        absl::StrAppend(&out, "[", absl::string_view(host).substr(0, percent));
        if (percent != std::string::npos) {
          absl::StrAppend(&out, "%25",
                          PercentEncode(absl::string_view(host).substr(percent + 1), kZoneIdChars));
        }
        absl::StrAppend(&out, "]");
      } else {
        absl::StrAppend(&out, PercentEncode(host, kRegNameChars));
      }
      if (port != kDefaultPortNumber) absl::StrAppend(&out, ":", port);
      break;
    case Transport::kUnix:
      break;
    case Transport::kVsock:
      absl::StrAppend(&out, vsock_cid);
      if (vsock_port != kDefaultPortNumber) absl::StrAppend(&out, ":", vsock_port);
      break;
  }
  absl::StrAppend(&out, "/", PercentEncode(export_name, kPathChars));

  std::vector<std::string> parameters;
  if (transport == Transport::kUnix) {
    parameters.push_back(
        absl::StrCat(kSocketKey, "=", PercentEncode(socket_path, kQueryValueOutputChars)));
  }
  if (inflight_limit.has_value()) {
    parameters.push_back(absl::StrCat(
        kInflightLimitKey, "=", *inflight_limit == 0 ? "auto" : absl::StrCat(*inflight_limit)));
  }
  for (const auto& [key, value] : tls_options) {
    if (key == kTlsUsernameKey) continue;  // written as userinfo above
    parameters.push_back(absl::StrCat(PercentEncode(key, kQueryValueOutputChars), "=",
                                      PercentEncode(value, kQueryValueOutputChars)));
  }
  if (!parameters.empty()) absl::StrAppend(&out, "?", absl::StrJoin(parameters, "&"));
  return out;
}

absl::StatusOr<NbdUri> ParseNbdUri(absl::string_view uri) { return Parser(uri).Parse(); }

}  // namespace nbd
