#include "nbd/wire.h"

namespace nbd {

const char* CommandName(Command command) {
  switch (command) {
    case Command::kRead: return "NBD_CMD_READ";
    case Command::kWrite: return "NBD_CMD_WRITE";
    case Command::kDisc: return "NBD_CMD_DISC";
    case Command::kFlush: return "NBD_CMD_FLUSH";
    case Command::kTrim: return "NBD_CMD_TRIM";
    case Command::kCache: return "NBD_CMD_CACHE";
    case Command::kWriteZeroes: return "NBD_CMD_WRITE_ZEROES";
    case Command::kBlockStatus: return "NBD_CMD_BLOCK_STATUS";
    case Command::kResize: return "NBD_CMD_RESIZE";
  }
  return "unknown command";
}

const char* OptionName(Option option) {
  switch (option) {
    case Option::kExportName: return "NBD_OPT_EXPORT_NAME";
    case Option::kAbort: return "NBD_OPT_ABORT";
    case Option::kList: return "NBD_OPT_LIST";
    case Option::kPeekExport: return "NBD_OPT_PEEK_EXPORT";
    case Option::kStartTls: return "NBD_OPT_STARTTLS";
    case Option::kInfo: return "NBD_OPT_INFO";
    case Option::kGo: return "NBD_OPT_GO";
    case Option::kStructuredReply: return "NBD_OPT_STRUCTURED_REPLY";
    case Option::kListMetaContext: return "NBD_OPT_LIST_META_CONTEXT";
    case Option::kSetMetaContext: return "NBD_OPT_SET_META_CONTEXT";
    case Option::kExtendedHeaders: return "NBD_OPT_EXTENDED_HEADERS";
  }
  return "unknown option";
}

const char* OptionReplyName(OptionReply reply) {
  switch (reply) {
    case OptionReply::kAck: return "NBD_REP_ACK";
    case OptionReply::kServer: return "NBD_REP_SERVER";
    case OptionReply::kInfo: return "NBD_REP_INFO";
    case OptionReply::kMetaContext: return "NBD_REP_META_CONTEXT";
    case OptionReply::kErrUnsup: return "NBD_REP_ERR_UNSUP";
    case OptionReply::kErrPolicy: return "NBD_REP_ERR_POLICY";
    case OptionReply::kErrInvalid: return "NBD_REP_ERR_INVALID";
    case OptionReply::kErrPlatform: return "NBD_REP_ERR_PLATFORM";
    case OptionReply::kErrTlsReqd: return "NBD_REP_ERR_TLS_REQD";
    case OptionReply::kErrUnknown: return "NBD_REP_ERR_UNKNOWN";
    case OptionReply::kErrShutdown: return "NBD_REP_ERR_SHUTDOWN";
    case OptionReply::kErrBlockSizeReqd: return "NBD_REP_ERR_BLOCK_SIZE_REQD";
    case OptionReply::kErrTooBig: return "NBD_REP_ERR_TOO_BIG";
    case OptionReply::kErrExtHeaderReqd: return "NBD_REP_ERR_EXT_HEADER_REQD";
  }
  return "unknown option reply";
}

const char* ReplyTypeName(ReplyType type) {
  switch (type) {
    case ReplyType::kNone: return "NBD_REPLY_TYPE_NONE";
    case ReplyType::kOffsetData: return "NBD_REPLY_TYPE_OFFSET_DATA";
    case ReplyType::kOffsetHole: return "NBD_REPLY_TYPE_OFFSET_HOLE";
    case ReplyType::kBlockStatus: return "NBD_REPLY_TYPE_BLOCK_STATUS";
    case ReplyType::kBlockStatusExt: return "NBD_REPLY_TYPE_BLOCK_STATUS_EXT";
    case ReplyType::kError: return "NBD_REPLY_TYPE_ERROR";
    case ReplyType::kErrorOffset: return "NBD_REPLY_TYPE_ERROR_OFFSET";
  }
  return "unknown reply type";
}

}  // namespace nbd
