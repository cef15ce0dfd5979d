// Receives OpenIGTLink messages with the C++ reference library (the one Slicer and PLUS use) and
// reports what the library decoded, one line per message, for Testing/test_igtl_interop.py.
//
//   igtl_receive HOST PORT OUTDIR TYPE/DEVICE:COUNT...
//
// Connects to HOST:PORT (retrying for up to 60 s), then reads messages until COUNT messages of
// every TYPE/DEVICE named (e.g. IMAGE/Strain:3 STATUS/Strain:1) have arrived. Per message:
//   IMAGE version=V crc=ok|bad device=D size=I,J,K spacing=SI,SJ,SK origin=X,Y,Z scalar=T endian=E file=PATH
//   STATUS version=V crc=ok|bad device=D code=C subcode=S name=N text=TEXT
//   TYPE version=V crc=ok|bad device=D          (any other type)
// crc: the library's CRC-64 of the body as received against the header's. IMAGE pixel data is
// written to PATH exactly as received (byte order as flagged by endian: 1 big, 2 little); origin
// is what the library calls the image position (the centre of the image).
//
// The Debian library (1.11) decodes header version 1 only. A version 2 message (OpenIGTLink 3:
// extended header, content, metadata) is checked against its CRC as received, then its content
// is handed to the library as the version 1 message it contains, as OpenIGTLink 3 does.
// Exit status: 0 when every count was reached, 2 on a usage or connection error.

#include <igtlClientSocket.h>
#include <igtlImageMessage.h>
#include <igtlMessageHeader.h>
#include <igtlOSUtil.h>
#include <igtlStatusMessage.h>
#include <igtl_header.h>
#include <igtl_util.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

igtl_uint16 BigEndian16(const unsigned char* p) { return static_cast<igtl_uint16>(p[0] << 8 | p[1]); }

igtl_uint32 BigEndian32(const unsigned char* p) {
  return static_cast<igtl_uint32>(p[0]) << 24 | static_cast<igtl_uint32>(p[1]) << 16 |
         static_cast<igtl_uint32>(p[2]) << 8 | p[3];
}

// A received message: its header as the library reads it (version 1) and the content it holds.
struct Received {
  int version;
  bool crc_ok;
  igtl::MessageHeader::Pointer header;
  std::vector<unsigned char> content;
};

bool Receive(igtl::Socket* socket, Received& message) {
  igtl_header header;
  if (socket->Receive(&header, IGTL_HEADER_SIZE) != IGTL_HEADER_SIZE) {
    return false;
  }
  igtl_header_convert_byte_order(&header);
  std::vector<unsigned char> body(static_cast<std::size_t>(header.body_size));
  if (!body.empty() && socket->Receive(&body[0], static_cast<int>(body.size())) != static_cast<int>(body.size())) {
    return false;
  }
  message.version = header.version;
  message.crc_ok = crc64(body.empty() ? 0 : &body[0], body.size(), 0ULL) == header.crc;
  std::size_t begin = 0, end = body.size();
  if (header.version == 2 && body.size() >= 12) {  // extended header: its size, metadata header and body sizes
    begin = BigEndian16(&body[0]);
    end -= BigEndian16(&body[2]) + BigEndian32(&body[4]);
  }
  message.content.assign(body.begin() + begin, body.begin() + end);
  header.version = 1;
  header.body_size = message.content.size();
  header.crc = crc64(message.content.empty() ? 0 : &message.content[0], message.content.size(), 0ULL);
  igtl_header_convert_byte_order(&header);
  message.header = igtl::MessageHeader::New();
  message.header->InitPack();
  std::memcpy(message.header->GetPackPointer(), &header, IGTL_HEADER_SIZE);
  message.header->Unpack();
  return true;
}

template <class Message>
typename Message::Pointer Decode(const Received& received) {
  typename Message::Pointer message = Message::New();
  message->SetMessageHeader(received.header);
  message->AllocatePack();
  if (!received.content.empty()) {
    std::memcpy(message->GetPackBodyPointer(), &received.content[0], received.content.size());
  }
  message->Unpack(1);
  return message;
}

std::string Describe(const Received& received) {
  std::ostringstream line;
  line << received.header->GetDeviceType() << " version=" << received.version
       << " crc=" << (received.crc_ok ? "ok" : "bad") << " device=" << received.header->GetDeviceName();
  return line.str();
}

std::string ReportImage(const Received& received, const std::string& file) {
  igtl::ImageMessage::Pointer image = Decode<igtl::ImageMessage>(received);
  int size[3];
  float spacing[3], origin[3];
  image->GetDimensions(size);
  image->GetSpacing(spacing);
  image->GetOrigin(origin);
  std::ofstream(file.c_str(), std::ios::binary)
      .write(static_cast<const char*>(image->GetScalarPointer()), image->GetImageSize());
  std::ostringstream line;
  line << Describe(received) << " size=" << size[0] << ',' << size[1] << ',' << size[2] << " spacing=" << spacing[0]
       << ',' << spacing[1] << ',' << spacing[2] << " origin=" << origin[0] << ',' << origin[1] << ',' << origin[2]
       << " scalar=" << image->GetScalarType() << " endian=" << image->GetEndian() << " file=" << file;
  return line.str();
}

std::string ReportStatus(const Received& received) {
  igtl::StatusMessage::Pointer status = Decode<igtl::StatusMessage>(received);
  std::ostringstream line;
  line << Describe(received) << " code=" << status->GetCode() << " subcode=" << status->GetSubCode()
       << " name=" << status->GetErrorName() << " text=" << status->GetStatusString();
  return line.str();
}

}  // namespace

int main(int argc, char* argv[]) {
  if (argc < 5) {
    std::cerr << "usage: " << argv[0] << " HOST PORT OUTDIR TYPE/DEVICE:COUNT..." << std::endl;
    return 2;
  }
  std::map<std::string, int> wanted;  // "TYPE/DEVICE" -> messages still to receive
  int remaining = 0;
  for (int k = 4; k < argc; ++k) {
    const std::string spec(argv[k]);
    const std::string::size_type colon = spec.rfind(':');
    wanted[spec.substr(0, colon)] = std::atoi(spec.substr(colon + 1).c_str());
    remaining += wanted[spec.substr(0, colon)];
  }
  igtl::ClientSocket::Pointer socket = igtl::ClientSocket::New();
  for (int attempt = 0; socket->ConnectToServer(argv[1], std::atoi(argv[2])) != 0; ++attempt) {
    if (attempt == 600) {
      std::cerr << "no connection to " << argv[1] << ':' << argv[2] << std::endl;
      return 2;
    }
    igtl::Sleep(100);
  }
  for (int count = 0; remaining > 0; ++count) {
    Received received;
    if (!Receive(socket, received)) {
      std::cerr << "connection closed" << std::endl;
      return 2;
    }
    const std::string type = received.header->GetDeviceType();
    if (type == "IMAGE") {
      std::ostringstream file;
      file << argv[3] << "/" << received.header->GetDeviceName() << "-" << count << ".raw";
      std::cout << ReportImage(received, file.str()) << std::endl;
    } else if (type == "STATUS") {
      std::cout << ReportStatus(received) << std::endl;
    } else {
      std::cout << Describe(received) << std::endl;
    }
    std::map<std::string, int>::iterator counter = wanted.find(type + "/" + received.header->GetDeviceName());
    if (counter != wanted.end() && counter->second > 0) {
      --counter->second;
      --remaining;
    }
  }
  return 0;
}
